"""Attribution: Integrated Gradients (Sundararajan et al., 2017) as one pure, jittable function.

`cu_jax.attribution.ig.integrated_gradients` is used for concept importance (IG of a class
log-probability w.r.t. concept scores) and for input-space maps through backbone -> projection ->
head (DESIGN §2.3, §2.4). Its quadrature rules reproduce captum's `IntegratedGradients`.
"""
