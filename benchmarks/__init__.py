"""``hgbench-bench``: a performance benchmark suite for hypergradient cost, memory and scale.

Every figure is a ratio measured side by side in one process (or, for memory, in fresh
subprocesses started one after another), because the machines it runs on are noisy and shared.
Sections (one module each): ``cost``, ``memory``, ``joint``, ``scale``, ``peers`` (its two studies:
``peers``, equal iterations, and ``peers_accuracy``, time to accuracy), ``overhead``, ``compile``;
``hgbench.benchmarks.cli`` runs them and writes ``<out>/<section>.csv``, ``<section>.png`` and a
``README.md`` assembled from every section found in ``<out>``. The studies run on their own, each
with its own README: ``frontier`` (accuracy of each hypergradient method against a reference, for
its time and memory; ``hgbench-bench frontier --out results/frontier``) and the paper's
experiments, each writing into ``results/paper/<experiment>`` (STUDY_OUT): ``paper_inverse``
(inverse quality), ``paper_overfit`` (overfitting a small validation set), ``paper_distill``
(dataset distillation judged by fresh models), ``paper_augment`` (learned data augmentation),
``paper_ptb`` (RNN regularisation on PTB), ``paper_val_split`` (validation split size) and
``paper_blackbox`` (IFT against Optuna at equal compute); results/paper/README.md puts them side
by side with the paper's numbers; and ``hyperclean`` (hyper data-cleaning on MNIST, the problem of
benchopt's benchmark_bilevel, every method × 5 seeds; ``results/hyperclean``).
"""

SECTIONS = ("cost", "memory", "joint", "scale", "peers", "overhead", "compile")
# studies: run on their own (not by ``all``), each writing its own README into its --out folder
STUDIES = ("frontier", "paper_inverse", "paper_overfit", "paper_distill", "paper_augment", "paper_ptb", "paper_val_split",
           "paper_blackbox", "hyperclean")
STUDY_OUT = {"frontier": "results/frontier", "paper_inverse": "results/paper/inverse_quality",
             "paper_overfit": "results/paper/overfitting", "paper_distill": "results/paper/distillation",
             "paper_augment": "results/paper/augmentation", "paper_ptb": "results/paper/ptb",
             "paper_val_split": "results/paper/validation_split", "paper_blackbox": "results/paper/blackbox",
             "hyperclean": "results/hyperclean"}
