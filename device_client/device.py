"""One virtual device: profile the user, fetch and decode a strategy, quantize, score, measure."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from chord.artifacts import ArtifactFormatError
from chord.codes import ENCODING_DELTA, CodeError, EncodedStrategy, decode_levels, reference_levels
from chord.levels import BudgetError, LevelCost, Tier, levels_to_bits
from chord.masks import personal_model
from chord.metrics import full_ranks, rank_metrics, sample_negatives, target_ranks
from chord.quant.adapt import DEVICE_RUNTIME, Scorer, build_runtime
from chord.quant.layout import ChannelLayout
from chord.spec import DeviceMetrics, ModelSpec, SpecError
from chord.spec import DeviceReport as MetricsReport
from chord.strategy import StrategyRequest
from device_client.artifacts import (
    ArtifactCache,
    ArtifactRefused,
    default_cache_dir,
    fetch_spec_artifacts,
)
from device_client.backbone_cache import BackboneMismatchError, CachedBackbone, get_backbone
from device_client.transport import Transport, TransportError

CORRUPTIONS = ("bit_flip", "truncate", "bad_crc", "bad_version")
# The figures a round reports: every field of the wire's DeviceMetrics, each read off RoundRecord.
_METRIC_FIELDS = dataclasses.fields(DeviceMetrics)


@dataclass(frozen=True)
class DeviceJob:
    """Everything one virtual device needs, fixed by the simulator so a re-run repeats exactly."""

    device_id: str
    user_index: int
    sequence: np.ndarray  # the user's item ids in time order (1-based)
    tier: str
    budget_bits: float
    rounds: int = 2
    interactions_per_round: int = 1
    negatives: int = 100  # sampled negatives per target (ranking "sampled")
    ranking: str = "sampled"  # sampled | full: full ranks the target among the whole catalogue
    runtime: str = DEVICE_RUNTIME  # chord.quant.adapt runtime the device scores with
    seed: int = 0
    compute_factor: float = 1.0  # modeled
    bandwidth_kbps: float = 10_000.0  # modeled
    rtt_ms: float = 50.0  # modeled
    offline_rounds: tuple[int, ...] = ()  # churn: rounds the device skips
    corrupt_rounds: tuple[int, ...] = ()  # fault: rounds whose received code gets corrupted
    report_to_server: bool = True
    request_tag: str = ""  # names the simulation in request ids, so reruns never collide
    # Virtual clock (simulator/clock.py): (t_s, trigger, first, stop) per strategy request; the
    # strategy fetched at virtual second t_s profiles sequence[:first] and scores positions
    # first..stop-1. Empty with virtual=False: the round plan from rounds and K above.
    schedule: tuple[tuple[float, str, int, int], ...] = ()
    virtual: bool = False
    staleness_probe: bool = False  # also score each later target with a fresh strategy


@dataclass
class RoundRecord:
    """One device's figures for one round; (device_id, round) identifies it."""

    device_id: str
    round: int
    tier: str
    status: str = "ok"  # "ok", "offline" or "failed"
    reason: str = ""  # why a round failed
    fault: str = ""  # a recovered fault, e.g. "code_rejected:bit_flip"
    strategy_source: str = ""  # "cloud", "previous" or "uniform_fallback"
    n_targets: int = 0
    hr5: float = 0.0
    hr10: float = 0.0
    ndcg5: float = 0.0
    ndcg10: float = 0.0
    avg_bits: float = 0.0
    server_avg_bits: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    reply_bytes: int = 0  # the GetStrategyReply alone: what one adaptation costs on the wire
    code_bytes: int = 0  # the packed (maybe deflated) code inside it
    rpc_ms: float = 0.0
    rpc_attempts: int = 0
    injected_losses: int = 0
    # Device compute below is CPU time of the device's own thread (time.thread_time), so other
    # devices, actors and the server sharing this host's cores do not inflate it.
    profile_ms: float = 0.0
    decode_ms: float = 0.0
    quantize_ms: float = 0.0
    adapt_ms: float = 0.0  # decode + quantize
    infer_ms: float = 0.0  # the round's first target scored alone: one query, as a phone serves it
    infer_batch_ms: float = 0.0  # the round's other targets scored in one batch (0 with one target)
    modeled_transfer_ms: float = 0.0  # modeled: (up + down bytes) / bandwidth + RTT
    modeled_compute_ms: float = 0.0  # modeled: (adapt + profile + inference) x compute factor
    t_s: float = 0.0  # virtual clock: virtual seconds since simulation start of the request
    trigger: str = ""  # virtual clock: arrival, drift, interval or model_version; "" = rounds
    strategy_bytes: int = 0  # GetStrategy request + reply (serialized protobuf)
    report_bytes: int = 0  # ReportMetrics request + reply (serialized protobuf)
    # Staleness probe (sampled devices): targets after a round's first, scored with the held
    # strategy and with a fresh one fetched for the history at that target.
    probe_targets: int = 0
    stale_hr10: float = 0.0
    fresh_hr10: float = 0.0
    stale_ndcg10: float = 0.0
    fresh_ndcg10: float = 0.0


@dataclass
class DeviceReport:
    """Everything a device sends back: its status and one record per round."""

    device_id: str
    tier: str
    user_index: int
    status: str = "completed"  # "completed" or "failed"
    reason: str = ""
    rounds: list[RoundRecord] = field(default_factory=list)
    spec_bytes: int = 0
    # FetchArtifact: serialized chunks received (weights, reference data, mask), resumes included
    artifact_bytes: int = 0
    artifact_attempts: int = 0  # streams opened
    artifact_resumes: int = 0  # streams opened past byte 0 after a broken one
    artifact_cache_hits: int = 0  # artifacts the device already held
    fp32_model_bytes: int = 0
    int8_model_bytes: int = 0
    duet_bytes: int = 0
    backbone_cache_hit: bool = False
    backbone_obtain_ms: float = 0.0
    setup_ms: float = 0.0
    modeled_download_ms: float = 0.0  # modeled: artifact download time at the tier's bandwidth
    worker_pid: int = 0
    detail: str = ""  # the error text behind a failure reason


def corrupt_code(code: EncodedStrategy, kind: str, rng: np.random.Generator) -> EncodedStrategy:
    """A damaged copy of a code: one flipped bit that matters, a cut payload, a wrong checksum
    or version."""
    payload = bytearray(code.payload)
    if kind == "bit_flip" and payload:
        # A bit no decoder may ignore: the first byte's bits 1-2 are a DEFLATE block type or
        # the first channels' levels. (Deflate's final pad bits are ignored by design, so a
        # flip there would leave the strategy intact and correctly accepted.)
        payload[0] ^= 1 << int(rng.integers(1, 3))
        return EncodedStrategy(
            bytes(payload), code.n_channels, code.crc32, code.version, code.encoding
        )
    if kind == "truncate":
        cut = max(0, len(payload) - 1 - int(rng.integers(max(1, len(payload) // 2))))
        return EncodedStrategy(
            bytes(payload[:cut]), code.n_channels, code.crc32, code.version, code.encoding
        )
    if kind == "bad_crc":
        return EncodedStrategy(
            code.payload, code.n_channels, code.crc32 ^ 0x1, code.version, code.encoding
        )
    if kind == "bad_version":
        return EncodedStrategy(code.payload, code.n_channels, code.crc32, "0" * 16, code.encoding)
    raise ValueError(f"unknown corruption {kind!r}; use one of {CORRUPTIONS}")


def _rank(scores: torch.Tensor, target: int, others: np.ndarray | None) -> int:
    """The target's 0-based rank (chord.metrics): among sampled candidates (target first;
    others None) or the whole catalogue (scores [1, n_items] of items 1..n, the user's other
    items excluded)."""
    if others is None:
        return int(target_ranks(scores)[0])
    padded = torch.cat([torch.zeros(1, 1), scores.float()], dim=1)
    return int(full_ranks(padded, torch.tensor([target]), [others])[0])


def uniform_fallback_bits(tier: Tier, budget_bits: float) -> int:
    """The widest of the tier's bit-widths that fits the budget (its narrowest if none does)."""
    fitting = [b for b in tier.level_bits if b <= budget_bits]
    return max(fitting) if fitting else min(tier.level_bits)


def pad_history(items: np.ndarray, max_len: int) -> torch.Tensor:
    """The last max_len items, left-padded with 0, as a LongTensor [1, max_len]."""
    recent = np.asarray(items[-max_len:], dtype=np.int64)
    out = np.zeros(max_len, dtype=np.int64)
    if len(recent):
        out[-len(recent) :] = recent
    return torch.from_numpy(out).unsqueeze(0)


def round_targets(n_items: int, rounds: int, k: int) -> list[range]:
    """Timeline positions scored in each round; the last round ends at the user's last item."""
    start = max(1, n_items - rounds * k)
    return [
        range(min(start + r * k, n_items), min(start + (r + 1) * k, n_items)) for r in range(rounds)
    ]


class VirtualDevice:
    """One phone: runs all its rounds against the cloud through a Transport; no Ray here."""

    def __init__(
        self,
        job: DeviceJob,
        transport: Transport,
        cache: ArtifactCache | None = None,
        reuse_artifacts: bool = True,
    ) -> None:
        """cache: where downloaded artifacts live (default: default_cache_dir()); with
        reuse_artifacts=False the device downloads them even when the cache holds them (a
        fresh phone in a fleet whose devices share one disk)."""
        self.job = job
        self.transport = transport
        self.cache = cache if cache is not None else ArtifactCache(default_cache_dir())
        self.reuse_artifacts = reuse_artifacts
        self._rng = np.random.default_rng([job.seed, job.user_index, 7])
        self._levels: np.ndarray | None = None
        self._model: Scorer | None = None
        self._bits_avg = 0.0
        self._n_catalogue = 0
        self._reference: np.ndarray | None = None  # reference levels for this tier and budget
        self._masked: CachedBackbone | None = None  # random mode with a mask: raw weights + mask

    def run(self) -> DeviceReport:
        """Set up, then play every round; a failed RPC ends the device with a reason."""
        job = self.job
        report = DeviceReport(job.device_id, job.tier, job.user_index, worker_pid=os.getpid())
        if job.virtual and not job.schedule:
            report.detail = "never online in the simulated span: no request made"
            return report
        start = time.perf_counter()
        try:
            spec, stats = self.transport.get_model_spec(job.device_id)
            report.spec_bytes = stats.request_bytes + stats.reply_bytes
            spec.check()
            if job.tier not in spec.tier_map:
                raise SpecError(
                    f"tier {job.tier!r} is not served; the server has {sorted(spec.tier_map)}"
                )
            fetched = fetch_spec_artifacts(
                self.transport, spec, self.cache, tag=job.device_id, reuse=self.reuse_artifacts
            )
            spec, got = fetched.spec, fetched.stats
            report.artifact_bytes, report.artifact_attempts = got.bytes_received, got.attempts
            report.artifact_resumes, report.artifact_cache_hits = got.resumes, got.cache_hits
            report.modeled_download_ms = self._transfer_ms(got.bytes_received)
            cached, hit = get_backbone(spec, fetched.weights, fetched.shared_mask)
        except TransportError as exc:
            return self._fail(report, f"spec:{exc.reason}", str(exc))
        except ArtifactRefused as exc:
            return self._fail(report, f"artifact:{exc.reason}", str(exc))
        except (SpecError, BudgetError, BackboneMismatchError, ArtifactFormatError) as exc:
            return self._fail(report, f"setup:{type(exc).__name__}", str(exc))
        report.backbone_cache_hit = hit
        report.backbone_obtain_ms = 0.0 if hit else cached.obtain_ms
        report.fp32_model_bytes = cached.fp32_bytes
        report.int8_model_bytes, report.duet_bytes = cached.int8_bytes, cached.duet_bytes
        self._n_catalogue = spec.n_items or int(cached.model.n_items)
        if cached.mask is not None:
            self._masked = cached  # random mode with a mask: strategies pick masked channels
        report.setup_ms = (time.perf_counter() - start) * 1e3
        seq = np.asarray(job.sequence, dtype=np.int64)
        exclude = set(seq.tolist())
        plan = self._plan(len(seq))
        for r, positions in enumerate(plan):
            rec = RoundRecord(job.device_id, r, job.tier)
            if job.virtual:
                rec.t_s, rec.trigger = job.schedule[r][0], job.schedule[r][1]
            report.rounds.append(rec)
            if r in job.offline_rounds:
                rec.status = "offline"
                continue
            try:
                self._round(rec, spec, cached.model, cached.layout, seq, positions, exclude)
            except TransportError as exc:
                rec.status, rec.reason = "failed", f"strategy:{exc.reason}"
                return self._fail(report, rec.reason, str(exc))
        return report

    def _plan(self, n_items: int) -> list[range]:
        """Positions each strategy scores: the virtual schedule's, or the round plan's."""
        job = self.job
        if job.virtual:
            return [range(first, stop) for _, _, first, stop in job.schedule]
        return round_targets(n_items, job.rounds, job.interactions_per_round)

    def _fail(self, report: DeviceReport, reason: str, detail: str) -> DeviceReport:
        """Mark the device failed."""
        report.status, report.reason, report.detail = "failed", reason, detail[:500]
        return report

    def _transfer_ms(self, n_bytes: int) -> float:
        """Modeled transfer time of n_bytes at the job's bandwidth plus one round trip."""
        return n_bytes * 8 / (self.job.bandwidth_kbps * 1e3) * 1e3 + self.job.rtt_ms

    @torch.inference_mode()
    def _round(
        self,
        rec: RoundRecord,
        spec: ModelSpec,
        backbone: torch.nn.Module,
        layout: ChannelLayout,
        seq: np.ndarray,
        positions: range,
        exclude: set[int],
    ) -> None:
        """Profile, ask, decode, quantize, score this round's targets, and fill the record."""
        job = self.job
        tier = spec.tier_map[job.tier]
        # A virtual request profiles the history up to its position even when it scores nothing.
        history = seq[: positions.start] if len(positions) or job.virtual else seq
        max_len = int(getattr(backbone, "max_len", spec.max_recent_items or 50))
        t0 = time.thread_time()
        req = self._request(spec, backbone, history, max_len, f"{job.request_tag}.{rec.round}")
        rec.profile_ms = (time.thread_time() - t0) * 1e3
        reply, stats = self.transport.get_strategy(req)
        rec.rpc_ms, rec.rpc_attempts = stats.elapsed_ms, stats.attempts
        rec.injected_losses = stats.injected_losses
        rec.bytes_up, rec.bytes_down = stats.request_bytes, stats.reply_bytes
        rec.reply_bytes = stats.reply_bytes
        rec.strategy_bytes = stats.request_bytes + stats.reply_bytes
        rec.code_bytes = len(reply.code.payload)
        rec.server_avg_bits = reply.avg_bits
        code = reply.code
        if rec.round in job.corrupt_rounds:
            kind = CORRUPTIONS[int(self._rng.integers(len(CORRUPTIONS)))]
            code = corrupt_code(code, kind, self._rng)
            rec.fault = f"code_corrupted:{kind}"
        sizes = spec.channel_sizes()
        t1 = time.thread_time()
        try:
            reference = None
            if code.encoding == ENCODING_DELTA and spec.reference is not None:
                reference = self._reference_levels(spec.reference, sizes, tier, spec.cost)
            levels = decode_levels(code, spec.version, spec.n_channels, reference)
        except CodeError:
            levels = None
            rec.fault = f"{rec.fault}:rejected" if rec.fault else "code_rejected"
        rec.decode_ms = (time.thread_time() - t1) * 1e3
        t2 = time.thread_time()
        if levels is not None:
            bits = levels_to_bits(levels, tier).astype(np.int64)
            self._model = self._adapt(backbone, levels, bits, tier, layout)
            self._levels = levels
            self._bits_avg = float((bits * sizes).sum() / sizes.sum())
            rec.strategy_source = "cloud"
        elif self._model is not None:
            rec.strategy_source = "previous"
        else:
            width = uniform_fallback_bits(tier, job.budget_bits)
            bits = np.full(spec.n_channels, width, np.int64)
            flat = np.full(spec.n_channels, tier.level_bits.index(width), np.uint8)
            self._model = self._adapt(backbone, flat, bits, tier, layout)
            self._bits_avg = float(bits[0])
            rec.strategy_source = "uniform_fallback"
        rec.quantize_ms = (time.thread_time() - t2) * 1e3
        rec.adapt_ms = rec.decode_ms + rec.quantize_ms
        rec.avg_bits = self._bits_avg
        self._score(rec, seq, positions, exclude, max_len, spec, backbone, layout)
        rec.modeled_transfer_ms = self._transfer_ms(rec.bytes_up + rec.bytes_down)
        rec.modeled_compute_ms = (
            rec.adapt_ms + rec.profile_ms + rec.infer_ms * rec.n_targets
        ) * job.compute_factor
        if job.report_to_server:
            self._report(rec)

    def _adapt(
        self,
        backbone: torch.nn.Module,
        levels: np.ndarray,
        bits: np.ndarray,
        tier: Tier,
        layout: ChannelLayout,
    ) -> Scorer:
        """The user's model: the quantized backbone, or with a mask the channels' masked and
        quantized weights (chord.masks.personal_model: the same weights as the cloud's bank)."""
        if self._masked is not None:
            assert self._masked.raw is not None and self._masked.mask is not None
            return personal_model(self._masked.raw, self._masked.mask, levels, tier)
        return build_runtime(backbone, bits, self.job.runtime, layout=layout)

    def _reference_levels(
        self, reference: np.ndarray, sizes: np.ndarray, tier: Tier, cost: LevelCost | None
    ) -> np.ndarray:
        """The spec reference's levels for this device's tier and budget (computed once)."""
        if self._reference is None:
            self._reference = reference_levels(reference, sizes, tier, self.job.budget_bits, cost)
        return self._reference

    def _score(
        self,
        rec: RoundRecord,
        seq: np.ndarray,
        positions: range,
        exclude: set[int],
        max_len: int,
        spec: ModelSpec,
        backbone: torch.nn.Module,
        layout: ChannelLayout,
    ) -> None:
        """Rank the round's targets with the quantized model.

        Sampled ranking: each target against `job.negatives` seeded unseen negatives. Full
        ranking: against every catalogue item but the user's other items (chord.metrics).
        The first target is scored alone, one query as a phone serves it: its thread CPU time
        is `infer_ms`. The others are scored in one batch [K - 1, ...] (`infer_batch_ms`), the
        same ranks in one call instead of K - 1 (a day's rounds score several targets each).
        A staleness-probe device also ranks every target after the round's first with a fresh
        strategy (profiled on the history just before that target); those extra requests are
        measurement, not fleet load, so their bytes and times stay out of the round's figures.
        """
        assert self._model is not None
        seen = [np.fromiter(exclude, dtype=np.int64)]
        full = self.job.ranking == "full"
        catalogue = torch.arange(1, self._n_catalogue + 1).unsqueeze(0) if full else None
        hists, cands, others, targets = [], [], [], []
        for pos in positions:
            hists.append(pad_history(seq[:pos], max_len))
            targets.append(target := int(seq[pos]))
            if catalogue is not None:  # full ranking
                cands.append(catalogue)
                others.append(seen[0][seen[0] != target])
                continue
            # Negatives depend on (seed, user, position) only: a re-run scores the same items.
            state = np.random.SeedSequence([self.job.seed, self.job.user_index, pos])
            neg_seed = int(state.generate_state(1)[0])
            negs = sample_negatives(self._n_catalogue, seen, self.job.negatives, seed=neg_seed)[0]
            cands.append(torch.from_numpy(np.concatenate([[target], negs])).unsqueeze(0))
        rec.n_targets = len(hists)
        if not hists:
            return
        t0 = time.thread_time()
        scores = [self._model.score_candidates(hists[0], cands[0])]
        rec.infer_ms = (time.thread_time() - t0) * 1e3
        if len(hists) > 1:
            t1 = time.thread_time()
            scores.append(self._model.score_candidates(torch.cat(hists[1:]), torch.cat(cands[1:])))
            rec.infer_batch_ms = (time.thread_time() - t1) * 1e3
        rows = torch.cat(scores)
        if full:
            padded = torch.cat([torch.zeros(len(hists), 1), rows.float()], dim=1)
            ranks = full_ranks(padded, torch.tensor(targets), others)
        else:
            ranks = target_ranks(rows)
        if self.job.staleness_probe:
            stale, fresh = [], []
            for i, pos in enumerate(positions):
                if i == 0:
                    continue
                model = self._fresh_model(rec, spec, backbone, layout, seq[:pos], max_len, pos)
                if model is not None:
                    stale.append(int(ranks[i]))
                    fresh.append(
                        _rank(
                            model.score_candidates(hists[i], cands[i]),
                            targets[i],
                            others[i] if full else None,
                        )
                    )
            if stale:
                s, f = rank_metrics(np.asarray(stale)), rank_metrics(np.asarray(fresh))
                rec.probe_targets = len(stale)
                rec.stale_hr10, rec.stale_ndcg10 = s["HR@10"], s["NDCG@10"]
                rec.fresh_hr10, rec.fresh_ndcg10 = f["HR@10"], f["NDCG@10"]
        m = rank_metrics(np.asarray(ranks))
        rec.hr5, rec.hr10, rec.ndcg5, rec.ndcg10 = m["HR@5"], m["HR@10"], m["NDCG@5"], m["NDCG@10"]

    def _request(
        self,
        spec: ModelSpec,
        backbone: torch.nn.Module,
        history: np.ndarray,
        max_len: int,
        request_id: str,
    ) -> StrategyRequest:
        """GetStrategy for this device: the profile of `history` (its last max_len items) from
        the frozen backbone's encoder, float32 [profile_dim], under the job's tier and budget."""
        job = self.job
        profile = backbone.encode(pad_history(history, max_len))[0].numpy()  # type: ignore[operator]
        return StrategyRequest(
            device_id=job.device_id,
            request_id=request_id,
            backbone_version=spec.version,
            tier=job.tier,
            budget_bits=float(job.budget_bits),
            profile=np.asarray(profile, dtype=np.float32).ravel(),
            reference_id=spec.offered_reference_id,
        )

    def _fresh_model(
        self,
        rec: RoundRecord,
        spec: ModelSpec,
        backbone: torch.nn.Module,
        layout: ChannelLayout,
        history: np.ndarray,
        max_len: int,
        pos: int,
    ) -> Scorer | None:
        """The device runtime for a strategy fetched now for `history`; None if that fails."""
        job = self.job
        tier = spec.tier_map[job.tier]
        req = self._request(
            spec, backbone, history, max_len, f"{job.request_tag}.{rec.round}.probe{pos}"
        )
        try:
            reply, _ = self.transport.get_strategy(req)
            reference = None
            if reply.code.encoding == ENCODING_DELTA and spec.reference is not None:
                reference = self._reference_levels(
                    spec.reference, spec.channel_sizes(), tier, spec.cost
                )
            levels = decode_levels(reply.code, spec.version, spec.n_channels, reference)
        except (TransportError, CodeError) as exc:
            what = exc.reason if isinstance(exc, TransportError) else "code_rejected"
            rec.fault = (rec.fault + ";" if rec.fault else "") + f"probe:{what}"
            return None
        bits = levels_to_bits(levels, tier).astype(np.int64)
        return build_runtime(backbone, bits, self.job.runtime, layout=layout)

    def _report(self, rec: RoundRecord) -> None:
        """Send the round's figures to the server; a failure here is a fault, not a failure."""
        metrics = DeviceMetrics(**{f.name: getattr(rec, f.name) for f in _METRIC_FIELDS})
        try:
            _, stats = self.transport.report_metrics(
                MetricsReport(rec.device_id, rec.round, rec.tier, metrics)
            )
        except TransportError as exc:
            rec.fault = (rec.fault + ";" if rec.fault else "") + f"report:{exc.reason}"
            return
        rec.bytes_up += stats.request_bytes
        rec.bytes_down += stats.reply_bytes
        rec.report_bytes = stats.request_bytes + stats.reply_bytes
