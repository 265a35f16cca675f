"""Gradient-flow diagnostics: the Ω triangle and its norms, the error-flow map, Lyapunov
exponents, the products each algorithm performs, and their plots.

Every name here is also available at the top level (`dprnn_jax.omega_norms`, …).
"""

from ._diagnostics.alignment import GradientAlignment as GradientAlignment
from ._diagnostics.alignment import gradient_alignment as gradient_alignment
from ._diagnostics.counts import ProductCount as ProductCount
from ._diagnostics.counts import closed_form_products as closed_form_products
from ._diagnostics.counts import count_products as count_products
from ._diagnostics.gradient_flow import error_flow_norms as error_flow_norms
from ._diagnostics.gradient_flow import gradient_flow as gradient_flow
from ._diagnostics.hlo_flops import HloFlops as HloFlops
from ._diagnostics.hlo_flops import hlo_dot_flops as hlo_dot_flops
from ._diagnostics.lyapunov import DecayBound as DecayBound
from ._diagnostics.lyapunov import LyapunovEstimate as LyapunovEstimate
from ._diagnostics.lyapunov import decay_bound as decay_bound
from ._diagnostics.lyapunov import lyapunov_exponent as lyapunov_exponent
from ._diagnostics.lyapunov import lyapunov_qr as lyapunov_qr
from ._diagnostics.omega_matrix import omega_matrix as omega_matrix
from ._diagnostics.omega_norms import OmegaNorms as OmegaNorms
from ._diagnostics.omega_norms import omega_norms as omega_norms
from ._diagnostics.plotting import color_limits as color_limits
from ._diagnostics.plotting import plot_decay as plot_decay
from ._diagnostics.plotting import plot_gradient_alignment as plot_gradient_alignment
from ._diagnostics.plotting import plot_omega_triangles as plot_omega_triangles
from ._diagnostics.plotting import plot_training_curves as plot_training_curves
from ._diagnostics.plotting import plot_triangle as plot_triangle
from ._diagnostics.tolerance import ToleranceReport as ToleranceReport
from ._diagnostics.tolerance import tolerance_report as tolerance_report

__all__ = [
    "plot_gradient_alignment",
    "gradient_alignment",
    "GradientAlignment",
    "DecayBound",
    "HloFlops",
    "LyapunovEstimate",
    "OmegaNorms",
    "ProductCount",
    "ToleranceReport",
    "closed_form_products",
    "color_limits",
    "count_products",
    "decay_bound",
    "error_flow_norms",
    "gradient_flow",
    "hlo_dot_flops",
    "lyapunov_exponent",
    "lyapunov_qr",
    "omega_matrix",
    "omega_norms",
    "plot_decay",
    "plot_omega_triangles",
    "plot_training_curves",
    "plot_triangle",
    "tolerance_report",
]
