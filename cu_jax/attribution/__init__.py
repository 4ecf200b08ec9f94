"""Attribution: Integrated Gradients (Sundararajan et al., 2017).

`ig.integrated_gradients` is the pure, jittable function; `ig.make_ig_fn` compiles it and is the
entry point everything else uses: concept importance (IG of a class log-probability w.r.t. concept
scores, `cu_jax.concepts.importance`), input-space maps of a concept through the backbone
(`saliency`), and answer-span attributions of an LLM (`text_ig`). Its quadrature rules reproduce
captum's `IntegratedGradients`.
"""
