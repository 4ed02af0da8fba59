"""farmhand: a declarative host bootstrapper and runtime supervisor for LlamaFarm hosts.

Data flows one way: facts (detect) -> profile (match) -> plan (steps) -> converge (apply)
-> ledger (state) -> supervisor (run). Each arrow is one module; see docs/architecture.md.
"""

__version__ = "0.2.0"  # 0.2: deployments (runtimes, roles), bundles; the one place it is written
