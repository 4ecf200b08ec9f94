"""Metrics and audits of a model and the plots a person reads: the metric registry (`metrics`),
membership-inference attacks (`mia`), the linear probe, the relearn test (`relearn`), the targets a
run is judged by (`targets`), the LLM audit (`llm_audit`, `text_metrics`) and `plots`."""
