"""Where things lie on the energy axis, and the limits of the edge checks.

Shared by every preprocessing step and by the engine's rejection rules, so a
window or threshold is defined once.
"""

from __future__ import annotations

import numpy as np

#: Spacing of the uniform working axis (eV).
WORK_STEP_EV = 0.1

#: Where the detected L3 maximum is placed on the model grid (eV).
L3_REFERENCE_EV = 641.0

#: Model input grid (eV): 256 points, 0.125 eV apart, 8 eV below to 24 eV above L3.
MODEL_GRID = L3_REFERENCE_EV - 8.0 + 0.125 * np.arange(256)

#: Pre-edge window used for the background fit, relative to L3 (eV).
PRE_EDGE_WINDOW = (-8.0, -2.5)

#: Post-edge window (relative to L3, eV): past the L2 white line, to the end of the model grid.
POST_EDGE_WINDOW = (18.0, 24.0)

#: Minimum measured width (eV) of a background window for it to count as measured.
MIN_BACKGROUND_WINDOW_EV = 1.0

#: Expected L3-L2 spin-orbit spacing of Mn (eV) and the range where its L2 line is searched first.
MN_SPIN_ORBIT_EV = 11.0
MN_SPIN_ORBIT_RANGE_EV = (9.6, 12.4)
#: Measured L3-L2 spacing (eV) the engine accepts as Mn: the range above, reaching 0.4 eV further up
#: because mixed valences stretch it (Mn2+ holds the L3 maximum, Mn4+ more of L2): 0.5-1.2 % of
#: synthetic Mn2+/Mn4+ mixtures of 50/50 to 70/30 measure 12.4-12.8 eV, a Fe-like doublet
#: 13.1 eV apart 13.03-13.09 (benchmarks/RESULTS.md).
MN_SPACING_ACCEPTED_EV = (9.6, 12.8)
#: Energies (eV) where a Mn L3 edge may appear on an axis off by up to about +-32 eV (Mn L3
#: maxima lie at 640-644 eV). Measured: the four measured spectra read the same from -35 to
#: +35 eV of offset (618-665 eV, the range before, refused them beyond about +-22 eV); on 16,384
#: training spectra the model input changed for one row (6.5 dB: a noise line taken for L3), and
#: the 20,000 validation spectra read exactly as before (benchmarks/RESULTS.md). Fe's L3 (708 eV)
#: stays outside for axes off by up to 30 eV.
L3_PLAUSIBLE_EV = (608.0, 676.0)
#: Energies (eV) the engine reads from a measured axis: where a Mn L3 may lie, with the
#: pre-edge below and L2, the post-edge and a neighbouring element's edge (Fe at +67 eV)
#: above. Wider acquisitions (a 2048-channel core-loss window with the O K and La M
#: edges) are cropped to it; the model grid and the training axes lie well inside.
ANALYSIS_WINDOW_EV = (L3_PLAUSIBLE_EV[0] - 30.0, L3_PLAUSIBLE_EV[1] + 60.0)
#: How far (eV) the measured window must reach below and above the detected L3 maximum: the
#: L3 line itself, and above it the trough and the start of L2. The forward model's crops keep
#: at least 2.5 eV below and 9 eV above the true L3 (``ForwardConfig.crop_below``/``crop_above``),
#: so a shorter window is one the network never saw; 0.5 eV of margin for the detected maximum.
L3_COVER_EV = (2.0, 8.5)
#: Least height of the L2 line over the L3 line's (:attr:`Prepared.l2_height`) for a measured
#: L2 region to count as a Mn L2,3 doublet: 0.1 % of synthetic training spectra (PSNR 5-60 dB,
#: every broadening and saturation) lie below 0.046, measured spectra at 0.17-0.57, a single line
#: or a bare edge step at 0.00-0.01 (benchmarks/RESULTS.md).
MIN_L2_HEIGHT = 0.02
#: Deepest dip below the background line, in units of the L3 line's height (:attr:`Prepared.dip_depth`),
#: of a spectrum that is read: an inverted spectrum (a negative drain current, transmission I/I0
#: instead of absorbance) has its lines as dips, and the small bump between them taken for L3 makes
#: them far deeper (the four measured spectra inverted: over 100; as measured: 0.01-0.08).
#: Of 20,000 synthetic validation spectra (PSNR >= 10 dB) 18 dip deeper than 2 (benchmarks/RESULTS.md).
MAX_DIP_DEPTH = 2.0
#: Doublet score over its noise response below which no edge is detectable.
MIN_EDGE_SNR = 6.0
#: Least point-to-point noise sigma assumed for a row scaled to a largest magnitude of 1 (a PSNR of
#: 100 dB; the forward model reaches 60 dB). A row without noise (a straight line, a constant: an
#: I0 or a digitized baseline read as the spectrum) would otherwise have a noise estimate of 0 and
#: its float32 rounding, about 1e-7, would pass for an edge millions of sigmas high: a noiseless
#: linear ramp was read as valence 3.09, status ok.
NOISE_FLOOR = 1e-5
#: The L3 maximum must be a line: within L3_DROP_WINDOW_EV above it the 0.3 eV-smoothed spectrum
#: falls by at least MIN_L3_DROP of the line's high-passed height (:attr:`Prepared.l3_drop`). A rising
#: slope or a step has no such fall, and the corner where replicate padding ends a slope passes for a
#: doublet: noiseless or noisy rising ramps (an I0 column read as the spectrum) were read as valence
#: 3.09, status ok. Measured (benchmarks/RESULTS.md): synthetic spectra with a detected edge at 0.084
#: and above (49,152 rows of three forward-model priors, 5-60 dB), the seven measured files 1.2-1.6,
#: rising ramps and arctan steps 0.
L3_DROP_WINDOW_EV = 3.0
MIN_L3_DROP = 0.05
#: Window (eV above L3) searched for the L2 maximum.
L2_SEARCH_EV = (7.0, 16.0)
#: Smoothing widths (eV) of the band-pass that finds L2 (the wide one is the L3 high-pass's).
L2_BAND_EV = (0.8, 3.0)
#: A maximum outside Mn's spin-orbit range counts as L2 only when it beats the
#: one inside by this many band-pass noise sigmas.
L2_OUTSIDE_MARGIN_SIGMA = 4.0
#: ... and by this share of the inside maximum (plural-scattering replicas of L3).
L2_OUTSIDE_MARGIN_REL = 0.2
#: Where the inside maximum is no local maximum, only the flank of a line just outside Mn's range at the
#: range's end (Cr's L2 9.0-9.3 eV above its L3, Fe's 13.1 eV), the line outside counts as L2 when it beats
#: that flank by this many band-pass noise sigmas. Searching Mn's range first had measured such flanks as
#: spacings of 9.6 or 12.4 eV, and Cr or Fe edges on axes off by more than 32 eV, where their L3 lies where
#: Mn's may, were read as Mn. Measured (benchmarks/RESULTS.md, 2026-12-07): 12 more of 20,000 synthetic
#: validation spectra refused (111 with no margin, 1 with 4 sigmas; 3 since :data:`L2_FLANK_REACH_EV`, and
#: 10 of 20,000 at t/lambda 1-1.5); two-line Cr (8.7-9.3 eV) and Fe
#: (13.1 eV) models alone read as Mn in 155 of 1,300 tries (393 before); of 70,148 measured spectra beside
#: (or without) Fe/Cr edges on axes off by up to 35 eV, 863 readings taken on the Fe or Cr edge now refused
#: and 5 right ones lost.
L2_FLANK_MARGIN_SIGMA = 2.0
#: How far (eV) beyond an end of Mn's range such a line may be (Cr's L2, 9.0-9.3 eV above its L3 in the cases
#: that were read as Mn, lies 0.3-0.6 eV below the range; Fe's 0.4-0.7 eV above it): with no limit the line taken was often a thick sample's L3 plasmon replica 13-16 eV
#: above L3, or a noise line 8 eV above it, and Mn2+ EELS spectra were refused as "not a Mn L2,3 edge" (44 of
#: 20,000 synthetic spectra at t/lambda 1-1.5; a review's finding, benchmarks/RESULTS.md).
L2_FLANK_REACH_EV = 1.0
#: Windows (eV, relative to the L3 maximum) over which the L3 and L2 lines' centroids are taken.
L3_CENTROID_EV = (-4.0, 5.0)
L2_CENTROID_EV = (7.0, 14.5)
#: Band-pass values count towards a line's centroid above this many noise sigmas.
CENTROID_NOISE_SIGMA = 2.0
#: Windows (eV, relative to the L3 maximum) where a Mn L2,3 edge has no line as strong as L3: the pre-edge, and
#: past the L2 lines of every valence (:attr:`Prepared.stray_line`).
STRAY_LINE_WINDOWS_EV = ((-16.0, -4.5), (17.0, 28.0))
#: A line there counts less this many noise sigmas of the high-pass.
STRAY_LINE_NOISE_SIGMA = 4.0
#: Least distance (eV) between the two strongest stray lines counted as two lines: a plural-scattering replica of
#: a Mn2+/Mn4+ mixture's L3 lines (3.5-4.2 eV apart, +5 % of axis scale) is one line with two maxima (at 1.5 eV,
#: 4.9 % of such EELS mixtures at t/lambda 1-2 were refused; 1 of 1,500 at 4 eV: benchmarks/RESULTS.md).
STRAY_LINE_APART_EV = 4.5
#: Highest second-strongest stray line (:attr:`Prepared.second_stray_line`, in units of the L3 line's high-passed
#: height) of a spectrum that is read: two or more lines as strong as half of L3, 4.5 eV or more apart, where a Mn
#: L2,3 edge has none are a periodic pattern (a sawtooth, a square wave, fringes) or another element's lines, not
#: Mn.  Measured (2026-12-07, benchmarks/RESULTS.md): 20,000 synthetic spectra of the training and validation
#: ranges (physics 1 and 2, PSNR 5-60 dB, t/lambda 0-1.5) at most 0.15; EELS Mn2+/Mn4+ mixtures at t/lambda 1-2
#: refused 1 of 1,500; the four measured files 0 (offsets, axis scales, blur and noise added); sawtooth, triangle,
#: square and sine waves of 2.5-8 eV period 0.61-1.1 where the windows are measured (lines 4 eV apart count as one).
MAX_SECOND_STRAY_LINE = 0.5
