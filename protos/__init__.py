"""Wire protocol: `.proto` sources and generated modules (package chord.v1)."""
