"""Old import path of the result writer; benchmarks.harness is its home (drop once unused).

inference.py still imports from here; it switches to
`benchmarks.harness` in its own rewrite, after which this module goes.
"""

from benchmarks.harness import RESULTS_DIR, RESULTS_MD, machine_info, markdown_table, write_result

__all__ = ["RESULTS_DIR", "RESULTS_MD", "machine_info", "markdown_table", "write_result"]
