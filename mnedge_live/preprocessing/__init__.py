"""The one preprocessing of Mn L2,3 spectra, shared by training and serving.

Every spectrum the model ever sees, synthetic or measured, goes through
:func:`preprocess`: the trainer imports it from here, the live engine calls
it, so the two cannot drift apart.

Steps, all batched in torch (the same code on CPU or GPU):

1. **Uniform axis.** Input rows live on uniform axes ``start[b] + step * i``
   with a ``valid`` mask (a contiguous window per row; padding or crops are
   invalid).  Measured spectra on any axis (any spacing, descending,
   repeated points) are brought there by :func:`to_uniform` (points denser
   than the work step averaged, :func:`bin_dense`); the engine first repairs
   single-point spikes (:func:`remove_spikes`).  Each row is then scaled to
   a largest magnitude of 1, so any intensity unit reads the same.
2. **Edge-hold.** Invalid points take the nearest valid value, so filters and
   resampling never see padding.
3. **Coarse alignment on the L3/L2 doublet.** A high-passed copy of the
   spectrum (background and edge steps removed) is correlated with a
   two-peak template of the 2p spin-orbit doublet (L2 about 11 eV above L3);
   the best match, refined to the local maximum, is the L3 position.  This
   handles any energy offset within the measured window (well past +-15 eV);
   the network is trained on the residual offsets this step leaves.
4. **Shift and resample** onto the model grid :data:`MODEL_GRID` with the L3
   maximum at :data:`L3_REFERENCE_EV`, edge-holding outside the measured
   window; a second channel marks those held points.
5. **Background**: a straight chord through the pre-edge and post-edge
   windows (a constant pre-edge level when no post-edge was measured) is
   removed; see :func:`remove_background`.
6. **Normalization** by the smoothed L3 maximum.

The result is ``(B, 2, L)``: channel 0 the normalized spectrum, channel 1 the
held-point mask.

Modules, in the order the steps run:

* :mod:`~mnedge_live.preprocessing.points`, :mod:`~mnedge_live.preprocessing.noise`,
  :mod:`~mnedge_live.preprocessing.spikes`: the measured points, their noise, spike repair;
* :mod:`~mnedge_live.preprocessing.measured_axis`: any measured axis onto the uniform work axis;
* :mod:`~mnedge_live.preprocessing.filters`: smoothing, correlation and edge holding of rows;
* :mod:`~mnedge_live.preprocessing.edge_search`: the L3 line and the L2 diagnostics;
* :mod:`~mnedge_live.preprocessing.background`: the pre/post-edge chord;
* :mod:`~mnedge_live.preprocessing.model_input`: :func:`preprocess`, which runs steps 2-6;
* :mod:`~mnedge_live.preprocessing.constants`: the grid, the windows and the thresholds.
"""

from mnedge_live.preprocessing.constants import (
    ANALYSIS_WINDOW_EV,
    CENTROID_NOISE_SIGMA,
    L2_BAND_EV,
    L2_CENTROID_EV,
    L2_FLANK_MARGIN_SIGMA,
    L2_FLANK_REACH_EV,
    L2_OUTSIDE_MARGIN_REL,
    L2_OUTSIDE_MARGIN_SIGMA,
    L2_SEARCH_EV,
    L3_CENTROID_EV,
    L3_COVER_EV,
    L3_DROP_WINDOW_EV,
    L3_PLAUSIBLE_EV,
    L3_REFERENCE_EV,
    MAX_DIP_DEPTH,
    MAX_SECOND_STRAY_LINE,
    MIN_BACKGROUND_WINDOW_EV,
    MIN_EDGE_SNR,
    MIN_L2_HEIGHT,
    MIN_L3_DROP,
    MN_SPACING_ACCEPTED_EV,
    MN_SPIN_ORBIT_EV,
    MN_SPIN_ORBIT_RANGE_EV,
    MODEL_GRID,
    POST_EDGE_WINDOW,
    PRE_EDGE_WINDOW,
    WORK_STEP_EV,
)
from mnedge_live.preprocessing.measured_axis import (
    Resampled,
    bin_dense,
    pack,
    pad_rows,
    resample_measured,
    resample_shared_axis,
    to_uniform,
)
from mnedge_live.preprocessing.model_input import Prepared, preprocess
from mnedge_live.preprocessing.noise import measured_noise
from mnedge_live.preprocessing.points import point_spacing, rescale_extreme_rows, row_median
from mnedge_live.preprocessing.spikes import find_spikes, remove_spikes

__all__ = [
    "ANALYSIS_WINDOW_EV",
    "CENTROID_NOISE_SIGMA",
    "L2_BAND_EV",
    "L2_CENTROID_EV",
    "L2_FLANK_MARGIN_SIGMA",
    "L2_FLANK_REACH_EV",
    "L2_OUTSIDE_MARGIN_REL",
    "L2_OUTSIDE_MARGIN_SIGMA",
    "L2_SEARCH_EV",
    "L3_CENTROID_EV",
    "L3_COVER_EV",
    "L3_DROP_WINDOW_EV",
    "L3_PLAUSIBLE_EV",
    "L3_REFERENCE_EV",
    "MIN_BACKGROUND_WINDOW_EV",
    "MIN_EDGE_SNR",
    "MIN_L3_DROP",
    "MAX_DIP_DEPTH",
    "MAX_SECOND_STRAY_LINE",
    "MIN_L2_HEIGHT",
    "MN_SPIN_ORBIT_EV",
    "MN_SPACING_ACCEPTED_EV",
    "MN_SPIN_ORBIT_RANGE_EV",
    "MODEL_GRID",
    "POST_EDGE_WINDOW",
    "PRE_EDGE_WINDOW",
    "Prepared",
    "Resampled",
    "WORK_STEP_EV",
    "bin_dense",
    "find_spikes",
    "measured_noise",
    "pack",
    "pad_rows",
    "point_spacing",
    "preprocess",
    "remove_spikes",
    "rescale_extreme_rows",
    "resample_measured",
    "resample_shared_axis",
    "row_median",
    "to_uniform",
]
