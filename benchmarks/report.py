"""Old import path of the result writer; benchmarks.harness is its home (drop once unused).

endpoint_load.py, loadgen.py and inference.py still import from here; they switch to
`benchmarks.harness` in their own rewrites, after which this module goes.
"""

from benchmarks.harness import RESULTS_DIR, RESULTS_MD, machine_info, markdown_table, write_result

__all__ = ["RESULTS_DIR", "RESULTS_MD", "machine_info", "markdown_table", "write_result"]
