"""Command-line front ends of the core library (the only place that reads argparse)."""
