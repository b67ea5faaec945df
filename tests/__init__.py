"""Test suite: unit tests plus end-to-end tests on a real gRPC server and a real local Ray."""
