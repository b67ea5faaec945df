"""Start-up checks of tokens, addresses, ports, durations and files, shared by every command.

Each check returns the value or raises StartupError with one line naming the setting, where it
came from (flag, environment variable or config key) and what to send instead. They run before
any work starts, so a configuration that can never work is refused at once rather than after
a model has loaded or a fleet has started.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import math
import os
import re
import socket
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path

from chord.plain_numbers import NumberError, parse_int

# gRPC metadata values of non-binary keys are printable ASCII (0x20-0x7E); leading and trailing
# spaces are stripped by HTTP/2 peers (gRPC over HTTP/2 spec, "Custom-Metadata"; RFC 9113 8.2.1).
_METADATA_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
MAX_TOKEN_CHARS = 4096


class StartupError(ValueError):
    """A setting that can never work; the message names it, its source and the fix."""


def check_token(token: str, source: str) -> str:
    """A bearer token gRPC metadata can carry: 1..4096 printable ASCII, no edge whitespace.

    source: where it came from, e.g. "--token" or "$CHORD_TOKEN".
    """
    if not token:
        raise StartupError(f"{source} is empty; send a non-empty token or none at all")
    if len(token) > MAX_TOKEN_CHARS:
        raise StartupError(f"{source} has {len(token)} characters; send at most {MAX_TOKEN_CHARS}")
    if token != token.strip():
        edge, where = (token[0], "leading") if token[0].isspace() else (token[-1], "trailing")
        raise StartupError(
            f"{source} has a {where} {edge!r}, which gRPC metadata cannot carry (HTTP/2 peers "
            "strip it); send the token without leading or trailing whitespace (a trailing "
            "newline from a file or `echo` is the usual cause)"
        )
    if not _METADATA_VALUE.fullmatch(token):
        bad = next(c for c in token if not 0x20 <= ord(c) <= 0x7E)
        raise StartupError(
            f"{source} contains {bad!r}, which gRPC metadata cannot carry; send printable ASCII "
            "(0x20-0x7E)"
        )
    return token


TOKEN_ENV = "CHORD_TOKEN"


def token_setting(flag: str | None, flag_name: str = "--token") -> str | None:
    """The bearer token from its flag, else from $CHORD_TOKEN, checked (check_token); None when
    neither is set. A variable that is set but empty is refused like an empty flag: a secret that
    failed to load (`CHORD_TOKEN=$(cat missing)`) must never turn authentication off.
    """
    if flag is not None:
        return check_token(flag, flag_name)
    env = os.environ.get(TOKEN_ENV)
    return None if env is None else check_token(env, f"${TOKEN_ENV}")


def check_port(port: int, source: str, *, allow_zero: bool = True) -> int:
    """A TCP port: 1..65535, or 0 (any free port) when allow_zero."""
    low = 0 if allow_zero else 1
    if not isinstance(port, int) or isinstance(port, bool) or not low <= port <= 65535:
        zero = " (0 = any free port)" if allow_zero else ""
        raise StartupError(f"{source} is {port!r}; send a port in {low}..65535{zero}")
    return port


def check_host(host: str, source: str) -> str:
    """An IPv4/IPv6 literal or a DNS host name (not resolved here)."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
        return host
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(bare):
        raise StartupError(
            f"{source} {host!r} is not an IP address or host name; send e.g. 127.0.0.1, ::1 "
            "or localhost"
        )
    return host


def check_address(address: str, source: str) -> tuple[str, int]:
    """(host, port) of "HOST:PORT" ("[v6]:PORT" for IPv6) with a port in 1..65535.

    An IPv6 host must be bracketed: "::1:50051" is refused, naming "[::1]:50051" to send.
    """
    host, sep, port_text = address.rpartition(":")
    try:  # ASCII digits only: "²".isdigit() is True (int() then raised) and int("١٢") is 12
        port = parse_int(port_text, "port")
    except NumberError:
        port = -1
    if not sep or not host or port < 0 or not port_text[:1].isdigit():  # no sign either
        raise StartupError(
            f"{source} {address!r} is not HOST:PORT; send e.g. 127.0.0.1:50051 or [::1]:50051"
        )
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        # "::1:50051": the last colon is read as the port's, so the host is not a name gRPC
        # resolves ("Misformatted domain name" after every retry). RFC 3986 3.2.2 brackets it.
        bracketed = join_host_port(host, port)
        if bracketed.startswith("["):
            raise StartupError(
                f"{source} {address!r} has an IPv6 host without brackets; send {bracketed} "
                "([IPv6]:PORT)"
            )
        raise StartupError(
            f"{source} {address!r} is not HOST:PORT; send e.g. 127.0.0.1:50051 or [::1]:50051"
        )
    check_host(host, source)
    return host, check_port(port, f"{source} port", allow_zero=False)


def join_host_port(host: str, port: int) -> str:
    """"HOST:PORT" for gRPC and URLs; IPv6 literals bracketed ("[::1]:50051", RFC 3986 3.2.2)."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        if ipaddress.ip_address(bare).version == 6:
            return f"[{bare}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def check_bindable(host: str, port: int, source: str, *, reuse_port: bool = False) -> None:
    """Resolve host and bind (never listen on) a plain TCP socket on host:port, then release it.

    Run before handing the address to a server library, so that an unresolvable host or a taken
    port is refused in one line instead of the library's own log lines. source names the flag
    of the port, e.g. "--port". reuse_port sets SO_REUSEPORT as the real server will.
    """
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if re.fullmatch(r"[0-9.]+|[0-9A-Fa-f:.%\w]*:[0-9A-Fa-f:.%\w]*", bare):
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            raise StartupError(
                f"--host {host!r} is not a valid IPv4 or IPv6 address; send e.g. 127.0.0.1, "
                "0.0.0.0 or ::1"
            ) from None
    try:
        infos = socket.getaddrinfo(
            bare or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise StartupError(
            f"--host {host!r} does not resolve ({reason}); send an IP address such as "
            "127.0.0.1, ::1 or 0.0.0.0, or a host name this machine resolves"
        ) from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            where = join_host_port(host, port)
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"{source} {port} is already in use on {host} ({where}); send a free port, "
                    "or 0 for any free port"
                ) from None
            raise StartupError(
                f"cannot bind {where} ({exc.strerror or exc}); send an address of this machine "
                f"as --host and a port you may bind as {source}"
            ) from None


def check_tls_pair(cert: str | Path, key: str | Path) -> None:
    """--tls-cert and --tls-key: existing PEM files, a certificate chain and its private key."""
    cert_p, key_p = check_file(cert, "--tls-cert"), check_file(key, "--tls-key")
    if b"-----BEGIN CERTIFICATE-----" not in cert_p.read_bytes():
        raise StartupError(
            f"--tls-cert {str(cert)!r} is not a PEM certificate (no BEGIN CERTIFICATE block); "
            "send a PEM certificate chain"
        )
    if not re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", key_p.read_bytes()):
        raise StartupError(
            f"--tls-key {str(key)!r} is not a PEM private key (no BEGIN ... PRIVATE KEY block); "
            "send the PEM private key of --tls-cert"
        )
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_p, key_p)
    except ssl.SSLError as exc:
        raise StartupError(
            f"--tls-cert {str(cert)!r} and --tls-key {str(key)!r} do not load as a certificate "
            f"chain and its private key ({exc.reason or exc}); send a matching PEM pair"
        ) from None


def check_pem_ca(path: str | Path, source: str) -> Path:
    """A PEM file of trusted root certificates (e.g. --tls-ca)."""
    p = check_file(path, source)
    try:
        ssl.create_default_context(cafile=str(p))
    except (ssl.SSLError, ValueError):
        raise StartupError(
            f"{source} {str(path)!r} is not a PEM certificate file; send the PEM root "
            "certificate(s) the server's certificate chains to"
        ) from None
    return p


def check_number(value: float, source: str, *, allow_zero: bool = False, unit: str = "") -> float:
    """A finite number > 0 (or >= 0 when allow_zero); unit (e.g. "of seconds") for the message."""
    if (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        or value < 0 or (value == 0 and not allow_zero)
    ):
        floor = ">= 0" if allow_zero else "> 0"
        what = f"a finite number {unit} {floor}" if unit else f"a finite number {floor}"
        raise StartupError(f"{source} is {value!r}; send {what}")
    return float(value)


def check_seconds(value: float, source: str, *, allow_zero: bool = False) -> float:
    """A finite duration in seconds, > 0 (or >= 0 when allow_zero)."""
    return check_number(value, source, allow_zero=allow_zero, unit="of seconds")


def _given(path: str | Path, source: str, what: str) -> Path:
    """Path(path) expanded, or StartupError for an empty or blank path (Path('') would be
    the current directory, where no output or input was asked for)."""
    if not str(path).strip():
        raise StartupError(f"{source} is empty; send {what}")
    return Path(path).expanduser()


def check_file(path: str | Path, source: str) -> Path:
    """An existing, readable regular file."""
    p = _given(path, source, "a path to an existing file")
    if not p.is_file():
        raise StartupError(f"{source} {str(path)!r} is not an existing file; send a path to one")
    try:
        with p.open("rb"):
            pass
    except OSError as exc:
        raise StartupError(f"{source} {str(path)!r} cannot be read ({exc.strerror})") from None
    return p


def check_dir(path: str | Path, source: str) -> Path:
    """An existing directory."""
    p = _given(path, source, "a path to an existing directory")
    if not p.is_dir():
        raise StartupError(f"{source} {str(path)!r} is not an existing directory")
    return p


def _try_write_in(directory: Path) -> str | None:
    """None if a file can be created (and is removed again) in directory, else the reason.

    A real attempt, not os.access: root passes os.access everywhere, even /proc and /sys.
    """
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".chord-write-check-"):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _writable_ancestor(p: Path, source: str) -> None:
    """The nearest existing ancestor of p must be a directory a file can be created in."""
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    reason = "not a directory" if not parent.is_dir() else _try_write_in(parent)
    if reason is not None:
        raise StartupError(
            f"{source} {str(p)!r} cannot be created ({str(parent)!r} is not a writable "
            f"directory: {reason}); send a path under a directory you can write"
        )


def check_out_dir(path: str | Path, source: str) -> Path:
    """An output directory: an existing writable directory, or one that can be created.

    Writability is tried by creating and removing a temporary file, so it holds for root too.
    """
    p = _given(path, source, "a directory path")
    if p.exists():
        if not p.is_dir():
            raise StartupError(f"{source} {str(path)!r} is a file; send a directory path")
        reason = _try_write_in(p)
        if reason is not None:
            raise StartupError(
                f"{source} {str(path)!r} is not writable ({reason}); send another directory"
            )
        return p
    _writable_ancestor(p, source)
    return p


def check_out_file(path: str | Path, source: str) -> Path:
    """An output file: writable if it exists (not a directory), else creatable.

    An existing file is opened for appending (never truncated) and closed again.
    """
    p = _given(path, source, "a file path")
    if p.is_dir():
        raise StartupError(f"{source} {str(path)!r} is a directory; send a file path")
    if p.exists():
        try:
            if p.is_file():
                with p.open("ab"):
                    pass
            elif not os.access(p, os.W_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as exc:
            raise StartupError(
                f"{source} {str(path)!r} is not writable ({exc.strerror or type(exc).__name__}); "
                "send another file"
            ) from None
        return p
    _writable_ancestor(p, source)
    return p


def path_arg(text: str) -> Path:
    """argparse type of a path flag: Path(text), refusing an empty or blank path (argparse
    then prints one `error: argument ...` line); Path('') is silently the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; send a path")
    return Path(text)


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (argparse prints one `error: argument ...` line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number; send 1 or more"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1; send 1 or more")
    return value


def int_between(lo: int, hi: int) -> Callable[[str], int]:
    """argparse type: a whole number in lo..hi (one `error: argument ...` line otherwise)."""

    def parse(text: str) -> int:
        try:
            value = parse_int(text, "the value")  # ASCII digits only: not `1_000` or ` 1 `
        except NumberError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number; send {lo}..{hi}"
            ) from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside {lo}..{hi}; send {lo}..{hi}")
        return value

    return parse


def max_parallel() -> int:
    """Most processes or threads of one kind that can do work here: 4 per usable core
    (os.sched_getaffinity, so a taskset or container limit counts). More only queue for the
    cores, and a huge count can exhaust memory or crash a native thread pool at start."""
    return 4 * len(os.sched_getaffinity(0))


def thread_count(text: str) -> int:
    """argparse type: a thread count in 1..max_parallel() (one `error: argument ...` line)."""
    value = positive_int(text)
    if value > (most := max_parallel()):
        raise argparse.ArgumentTypeError(
            f"{value} threads is above {most} (4 per usable core); send 1..{most}"
        )
    return value


def tls_failure(details: str, ca_flag: str = "--tls-ca", name_flag: str = "") -> str | None:
    """What a failed TLS handshake means and what to send, from a gRPC status's details
    (UNAVAILABLE: "... Tls handshake failed ... CERTIFICATE_VERIFY_FAILED ..."); None when the
    details name no TLS failure. Such a failure never clears by retrying: callers stop at once.
    """
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return (
            "the TLS handshake failed: the server's certificate is not signed by the CA given "
            f"(CERTIFICATE_VERIFY_FAILED); send the CA certificate that signed it as {ca_flag}"
        )
    if "Hostname Verification" in details or "No match found for server name" in details:
        fix = (f"pass the name it was issued for as {name_flag} NAME" if name_flag
               else "connect by the host name it was issued for")
        return (
            "the TLS handshake failed: the server's certificate is not issued for the host "
            f"name connected to (hostname verification); {fix}"
        )
    lowered = details.lower()
    if "handshake failed" in lowered or "ssl_error" in lowered:
        return (
            f"the TLS handshake failed ({clipped(details, 160)}); check that the server uses TLS "
            f"and that {ca_flag} is the CA that signed its certificate"
        )
    return None


def wait_for_tcp(host: str, port: int, timeout_s: float, what: str, hint: str) -> None:
    """Connect once to host:port within timeout_s, or raise StartupError naming what to check.

    Used before handing an address to a client library that would otherwise retry forever
    (Ray's GCS client) so that a wrong address fails in seconds with one line.
    """
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout_s):
            return
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StartupError(
            f"cannot reach {what} at {host}:{port} within {timeout_s:g} s ({reason}); {hint}"
        ) from None


__all__ = [
    "MAX_TOKEN_CHARS",
    "StartupError",
    "check_address",
    "check_bindable",
    "check_dir",
    "check_file",
    "check_host",
    "check_number",
    "check_out_dir",
    "check_out_file",
    "check_pem_ca",
    "check_port",
    "check_seconds",
    "check_tls_pair",
    "check_token",
    "join_host_port",
    "max_parallel",
    "path_arg",
    "positive_int",
    "thread_count",
    "tls_failure",
    "token_setting",
    "wait_for_tcp",
]


def exact(value: object) -> str:
    """A value as an error writes it back, never rounded: 1.0000001 stays so, 3600001.0 is
    3600001, so an out-of-range value cannot look in range. Non-numbers: repr."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and (
        abs(value) < 2**63
    ):
        return str(int(value))
    return repr(value)


def check_int(value: int, source: str, lo: int, hi: int, note: str = "") -> int:
    """An integer in lo..hi (bools refused); note (e.g. "0 = off") goes into the message."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        extra = f" ({note})" if note else ""
        raise StartupError(f"{source} is {value!r}; send an integer in {lo}..{hi}{extra}")
    return value


def check_in_range(
    value: float, source: str, lo: float, hi: float, *, unit: str = "", lo_open: bool = False
) -> float:
    """A finite number in [lo, hi] ((lo, hi] when lo_open); unit (e.g. "seconds") for the message.

    The offending value is shown exactly (repr), never rounded into the range.
    """
    if (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        or value < lo or value > hi or (lo_open and value == lo)
    ):
        what = f"a finite number of {unit}" if unit else "a finite number"
        bracket = "(" if lo_open else "["
        raise StartupError(
            f"{source} is {exact(value)}; send {what} in {bracket}{exact(lo)}, {exact(hi)}]"
        )
    return float(value)


ECHO_CHARS = 40  # how much of a refused string an error message quotes


def clipped(value: object, limit: int = ECHO_CHARS, keep: int | None = None) -> str:
    """repr(value) when at most `limit` characters long, else its first `keep` (default: limit)
    characters and how long it was: a refused value of any type (an int of hundreds of digits,
    a long list) stays one readable line."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit if keep is None else keep]}... ({len(text)} characters)"


def shown(value: str, limit: int = ECHO_CHARS) -> str:
    """A refused string as an error quotes it: repr of at most limit characters, then how long
    it was, so an error never grows with a hostile value (gRPC caps status details at ~8 KiB)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"
