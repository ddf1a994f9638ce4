"""``hgbench-bench``: a performance benchmark suite for hypergradient cost, memory and scale.

Every figure is a ratio measured side by side in one process (or, for memory, in fresh
subprocesses started one after another), because the machines it runs on are noisy and shared.
Sections (one module each): ``cost``, ``memory``, ``joint``, ``scale``, ``peers``, ``overhead``,
``compile``;
``benchmarks.cli`` runs them and writes ``<out>/<section>.csv``, ``<section>.png`` and a
``README.md`` assembled from every section found in ``<out>``. The ``frontier`` study (accuracy
of each hypergradient method against a reference, for its time and memory) runs on its own:
``hgbench-bench frontier --out results/frontier``.
"""

SECTIONS = ("cost", "memory", "joint", "scale", "peers", "overhead", "compile")
# studies: run on their own (not by ``all``), each writing its own README into its --out folder
STUDIES = ("frontier", "paper_inverse")
