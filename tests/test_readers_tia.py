"""FEI/ThermoFisher TIA series (``.ser``) written to disk by hand (tests/ser_writer.py), read through RosettaSciIO."""

from __future__ import annotations

import numpy as np
import pytest
from ser_writer import write_ser

from mnedge_live.readers import MeasuredSpectrum, ReadError, SpectrumImage, read_file

E = 630.0 + 0.25 * np.arange(200)
Y = (np.exp(-0.5 * ((E - 641.0) / 0.7) ** 2) + 0.4 * np.exp(-0.5 * ((E - 652.0) / 1.0) ** 2) + 0.05).astype("f4")


def test_a_spectrum_reads_with_its_energy_origin_at_the_calibration_element(tmp_path, caplog):
    """TIA stores the energy of channel ``CalibrationElement``; RosettaSciIO 0.15 puts it at channel 0."""
    p = write_ser(tmp_path / "one.ser", Y[None], offset=640.0, delta=0.25, element=40)
    with caplog.at_level("WARNING", logger="mnedge_live.readers"):
        (s,) = read_file(p)
    assert isinstance(s, MeasuredSpectrum)
    assert np.allclose(s.energy, E) and np.array_equal(s.intensity, Y)
    assert "gives 640.000 eV at channel 40: channel 0 is at 630.000 eV" in caplog.text


@pytest.mark.parametrize("dims, shape", [([(3, 0.0, 1e-9, "meters"), (4, 0.0, 1e-9, "meters")], (3, 4)),
                                         (None, (1, 5))])
def test_spectrum_images_and_line_scans(tmp_path, dims, shape):
    cube = np.random.default_rng(0).random((*shape, E.size)).astype("f4")
    p = write_ser(tmp_path / "si.ser", cube.reshape(-1, E.size), offset=630.0, delta=0.25, dims=dims)
    (img,) = read_file(p)
    assert isinstance(img, SpectrumImage) and img.shape == shape
    assert np.allclose(img.energy, E) and np.array_equal(np.asarray(img.data.compute()), cube)


def _corrupt(p, at: int, fmt: str, *values) -> None:
    import struct

    b = bytearray(p.read_bytes())
    struct.pack_into(fmt, b, at, *values)
    p.write_bytes(bytes(b))


@pytest.mark.parametrize("damage, why", [
    (lambda p: p.write_bytes(p.read_bytes()[:60]), "truncated or corrupt series"),
    (lambda p: _corrupt(p, 14, "<II", 4_000_000_000, 4_000_000_000), "claims 4000000000 of 4000000000 elements"),
    (lambda p: _corrupt(p, 0, "<H", 0x4D4D), "not a TIA series"),
])
def test_a_truncated_or_corrupt_series_is_refused_before_anything_is_allocated(tmp_path, damage, why):
    """RosettaSciIO allocates what the header says: a count of 4e9 elements asked for 15 GiB."""
    p = write_ser(tmp_path / "bad.ser", Y[None], offset=630.0, delta=0.25)
    damage(p)
    with pytest.raises(ReadError, match=why):
        read_file(p)


def test_an_element_longer_than_the_file_is_refused(tmp_path):
    import struct

    p = write_ser(tmp_path / "long.ser", Y[None], offset=630.0, delta=0.25)
    data_at = struct.unpack_from("<I", p.read_bytes(), struct.unpack_from("<I", p.read_bytes(), 22)[0])[0]
    _corrupt(p, data_at + 22, "<I", 2_000_000_000)   # the element's ArrayLength
    with pytest.raises(ReadError, match="1 elements of 2000000000 values each do not fit"):
        read_file(p)


def test_predict_reads_a_tia_spectrum_image(tmp_path, capsys, tiny_artifact):
    from mnedge_live.cli import main

    cube = np.tile(Y, (2, 3, 1))
    p = write_ser(tmp_path / "si.ser", cube.reshape(-1, E.size), offset=630.0, delta=0.25,
                  dims=[(2, 0.0, 1e-9, "meters"), (3, 0.0, 1e-9, "meters")])
    assert main(["predict", "--no-progress", "--model", str(tiny_artifact), str(p)]) == 0
    assert "map 2x3 (signal 0): 6 of 6 spectra" in capsys.readouterr().out


def test_dimensions_that_do_not_make_the_elements_are_refused(tmp_path):
    """Two spectra claiming a 600 x 600 map: RosettaSciIO would fill 359,998 missing pixels in (3 GiB)."""
    p = write_ser(tmp_path / "dims.ser", np.tile(Y, (2, 1)), offset=630.0, delta=0.25,
                  dims=[(600, 0.0, 1e-9, "meters"), (600, 0.0, 1e-9, "meters")])
    with pytest.raises(ReadError, match="dimensions 600 x 600 do not make its 2 elements"):
        read_file(p)


def test_elements_with_different_energy_calibrations_are_refused(tmp_path):
    import struct

    p = write_ser(tmp_path / "mixed.ser", np.tile(Y, (2, 1)), offset=630.0, delta=0.25)
    b = p.read_bytes()
    second = struct.unpack_from("<2I", b, struct.unpack_from("<I", b, 22)[0])[1]
    _corrupt(p, second, "<d", 640.0)   # the second element's calibration offset
    with pytest.raises(ReadError, match="energy calibrations differ"):
        read_file(p)


def test_an_emi_file_is_refused_by_its_corrupt_series(tmp_path):
    """The .ser files an .emi names are checked as a .ser read directly is."""
    ser = write_ser(tmp_path / "x_1.ser", Y[None], offset=630.0, delta=0.25)
    _corrupt(ser, 14, "<II", 2_000_000, 2_000_000)
    (tmp_path / "x.emi").write_bytes(b"\x00" * 64)
    with pytest.raises(ReadError, match="x_1.ser: a truncated or corrupt series"):
        read_file(tmp_path / "x.emi")
