"""The CLI pipelines: stages that write artifacts under --workdir and skip when they exist.

- `runner`: the stage registry of each pipeline, fingerprints, skip / resume / refuse decisions;
- `artifacts`: every path of a workdir and its loader (the only place stages read each other's
  output through);
- `reporting`: what both pipelines' reports share;
- `image/`, `llm/`: one module per stage of each pipeline. `config.pipeline` names the one a run
  uses; the runner imports it (which registers its stages), so a run loads only its own code.
"""
