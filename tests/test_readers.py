"""File readers: every supported format from real files on disk, and clear ReadErrors for bad ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hspy_writer import write_contiguous_hspy

from mnedge_live.readers import MeasuredSpectrum, ReadError, RefusedSignal, SpectrumImage, read_file

E = np.round(np.arange(630.0, 665.0, 0.25), 4)
Y = np.round(np.exp(-0.5 * ((E - 641.0) / 0.7) ** 2) + 0.05, 6)


def write_text(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def rows(sep: str, e=E, y=Y) -> str:
    return "".join(f"{a}{sep}{b}\n" for a, b in zip(e, y))


def signal_dict(data, axes, title="s"):
    """A RosettaSciIO signal dict as HyperSpy hands it to the writers."""
    return {"data": data, "axes": axes, "metadata": {"General": {"title": title}, "Signal": {"signal_type": "EELS"}},
            "original_metadata": {}, "attributes": {"_lazy": False}, "tmp_parameters": {}, "learning_results": {},
            "models": {}, "package_info": {"name": "hyperspy", "version": "2.1"}}


def nav(name, size):
    return {"name": name, "size": size, "offset": 0.0, "scale": 1.0, "units": "nm", "navigate": True}


def energy_axis(size, offset=630.0, scale=0.25, units="eV"):
    return {"name": "Energy loss", "size": size, "offset": offset, "scale": scale, "units": units, "navigate": False}


def write_hspy(path: Path, data, axes) -> Path:
    from rsciio.hspy import file_writer

    file_writer(str(path), signal_dict(data, axes), show_progressbar=False)
    return path


# ----------------------------------------------------------------------------- two-column text


@pytest.mark.parametrize("name, text, bom", [
    ("comma_header_bom.csv", "Column2,Column3\n" + rows(","), True),
    ("comma_plain.csv", rows(","), False),
    ("tabs.txt", "energy (eV)\tintensity\n" + rows("\t"), False),
    ("spaces.dat", "# measured at some beamline\n# E  I\n" + rows("   "), False),
    ("semicolon_decimal_comma.csv", "E;I\n" + rows(";").replace(".", ","), False),
    ("tabs_decimal_comma.txt", "E\tI\n" + rows("\t").replace(".", ","), False),
    ("three_columns.csv", "E,I,I0\n" + "".join(f"{a},{b},1.0\n" for a, b in zip(E, Y)), False),
    ("crlf_trailing_blank.csv", rows(",").replace("\n", "\r\n") + "\r\n\r\n", False),
])
def test_two_column_text_variants(tmp_path, name, text, bom):
    items = read_file(write_text(tmp_path / name, text, bom))
    assert len(items) == 1
    s = items[0]
    assert isinstance(s, MeasuredSpectrum)
    assert s.index == 0 and s.pixel is None and s.file.endswith(name)
    np.testing.assert_allclose(s.energy, E)
    np.testing.assert_allclose(s.intensity, Y)


def test_descending_axis_is_kept_as_measured(tmp_path):
    s = read_file(write_text(tmp_path / "desc.csv", rows(",", E[::-1], Y[::-1])))[0]
    np.testing.assert_allclose(s.energy, E[::-1])
    np.testing.assert_allclose(s.intensity, Y[::-1])


def test_nan_values_are_passed_on_for_the_engine_to_reject(tmp_path):
    s = read_file(write_text(tmp_path / "nan.csv", "640.0,1.0\n640.1,nan\n640.2,1.1\n"))[0]
    assert np.isnan(s.intensity[1])


@pytest.mark.parametrize("name, content, reason", [
    ("empty.csv", b"", "empty"),
    ("header_only.csv", b"energy,intensity\n", "no numeric"),
    ("prose.txt", b"This is not a spectrum.\nJust words.\n", "no numeric"),
    ("one_column.csv", b"640.0\n640.1\n640.2\n", "one column"),
    ("one_row.csv", b"640.0,1.0\n", "only one data row"),
    ("junk_inside_data.csv", b"640.0,1.0\n640.1,1.1\nEND OF DATA\n640.2,1.2\n", "line 3 .* follow it again"),
    ("broken_last_row.csv", b"640.0,1.0\n640.1,1.1\n640.2,abc\n", "line 3 is not two numbers"),
    ("binary.dat", bytes(range(256)) * 4, "binary"),
    ("garbage.msa", b"\x00\x01\x02 not an emsa file at all", "EMSA"),
    ("garbage.hspy", b"not hdf5 at all, just text", "HyperSpy"),
    ("garbage.dm3", b"\x00\x00\x00\x03 truncated DM3 header", "DigitalMicrograph"),
    ("garbage.dm4", b"definitely not a dm4 file", "DigitalMicrograph"),
])
def test_unreadable_files_raise_read_error_with_reason(tmp_path, name, content, reason):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ReadError, match=reason):
        read_file(p)


@pytest.mark.parametrize("footer", ["END OF SCAN\n", "END OF SCAN\n# closed shutter\n\nScan time: 12 min\n"])
def test_a_text_footer_after_the_data_is_ignored_with_a_warning_naming_its_line(tmp_path, caplog, footer):
    head = "# Beamline: BL 8.0.1\n# Sample: MnO\nEnergy\tmu\n"
    path = write_text(tmp_path / "footer.dat", head + rows("\t") + footer)
    with caplog.at_level("WARNING", logger="mnedge_live.readers"):
        (s,) = read_file(path)
    np.testing.assert_allclose(s.energy, E)
    np.testing.assert_allclose(s.intensity, Y)
    assert f"line {4 + len(E)} and what follows it are not data rows: ignored as a footer" in caplog.text
    assert "'END OF SCAN'" in caplog.text and "footer.dat" in caplog.text


@pytest.mark.parametrize("tail, reason", [
    ("END OF SCAN\n" + rows("\t")[:40], "line 142 is not two numbers .* numbers follow it again \\(line 143\\)"),
    ("END OF SCAN\n640.0\n", "numbers follow it again \\(line 143\\)"),        # a lone number is no footer
    ("662.0\tn/a\n", "line 142 is not two numbers after the data began"),   # a broken row is no footer
])
def test_numbers_after_a_footer_or_a_broken_last_row_are_still_refused(tmp_path, tail, reason):
    path = write_text(tmp_path / "two_blocks.dat", "Energy\tmu\n" + rows("\t") + tail)
    with pytest.raises(ReadError, match=reason):
        read_file(path)


def columns(header: str, *cols, sep: str = " ") -> str:
    return header + "".join(sep.join(str(c) for c in row) + "\n" for row in zip(E, *cols))


MONITOR = np.full_like(Y, 1e5)


@pytest.mark.parametrize("name, text", [
    ("xdi_like.xdi", "# XDI/1.0\n# Column.1: energy eV\n# Column.2: i0\n#----\n# energy i0 itrans mutrans\n"
     + "".join(f"{a} 1e5 {1e5 * np.exp(-b):.6f} {b}\n" for a, b in zip(E, Y))),
    ("athena_nor.dat", columns("#  energy norm bkg_norm der_norm\n", Y, Y * 0.9, Y * 0.1, sep="  ")),
    ("units_and_case.csv", columns("Energy (eV),I0 (A),Mu (a.u.)\n", MONITOR, Y, sep=",")),
    ("quoted_spreadsheet.csv", '"energy","mu"\n' + "".join(f'"{a}","{b}"\n' for a, b in zip(E, Y))),
])
def test_a_named_spectrum_column_is_read_among_several(tmp_path, name, text):
    s = read_file(write_text(tmp_path / name, text))[0]
    np.testing.assert_allclose(s.energy, E)
    np.testing.assert_allclose(s.intensity, Y, rtol=1e-6)


def test_a_file_whose_second_column_is_the_monitor_is_refused_unless_a_column_is_named(tmp_path):
    path = write_text(tmp_path / "tey.dat", columns("# energy i0 tey tfy\n", MONITOR, Y, 2 * Y))
    with pytest.raises(ReadError, match="column 2 \\('i0'\\) is a monitor"):
        read_file(path)
    for choice, want in (("tey", Y), ("TFY", 2 * Y), ("3", Y), ("4", 2 * Y)):
        np.testing.assert_allclose(read_file(path, column=choice)[0].intensity, want)
    with pytest.raises(ReadError, match="no column named 'pfy'; the columns are energy, i0, tey, tfy"):
        read_file(path, column="pfy")
    for bad in ("1", "5"):
        with pytest.raises(ReadError, match=f"column {bad} is not an intensity column"):
            read_file(path, column=bad)


def test_a_space_separated_header_keeps_units_with_their_names(tmp_path):
    # "mu (a.u.)" split on its space gave 4 names for 3 columns: the names were dropped and I0 was read
    s = read_file(write_text(tmp_path / "units.dat", columns("# energy  I0  mu (a.u.)\n", MONITOR, Y, sep="  ")))[0]
    np.testing.assert_allclose(s.intensity, Y)


def test_a_header_that_cannot_be_matched_to_its_columns_and_names_a_monitor_is_refused(tmp_path):
    path = write_text(tmp_path / "photon.dat", columns("# Photon Energy I0 TEY\n", MONITOR, Y))
    with pytest.raises(ReadError, match="4 fields for 3 columns .* by its number"):
        read_file(path)
    np.testing.assert_allclose(read_file(path, column="3")[0].intensity, Y)


@pytest.mark.parametrize("header, reason", [
    ("energy,I0\n", "column 2 is named 'I0', a monitor"),
    ("intensity,energy\n", "column 1 is named 'intensity', a spectrum"),
])
def test_two_named_columns_are_checked_by_their_names(tmp_path, header, reason):
    with pytest.raises(ReadError, match=reason):
        read_file(write_text(tmp_path / "two.csv", header + rows(",")))
    ok = read_file(write_text(tmp_path / "ok.csv", "Energy (eV),Counts\n" + rows(",")))[0]
    np.testing.assert_allclose(ok.intensity, Y)


def test_quoted_fields_with_decimal_commas_split_between_the_quotes(tmp_path):
    text = '"energy","mu"\n' + "".join(f'"{a}","{b}"\n'.replace(".", ",") for a, b in zip(E, Y))
    s = read_file(write_text(tmp_path / "quoted_comma.csv", text))[0]
    np.testing.assert_allclose(s.energy, E)
    np.testing.assert_allclose(s.intensity, Y)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_utf16_text_with_a_byte_order_mark(tmp_path, encoding):
    text = "energy\tintensity\n" + rows("\t")
    data = text.encode(encoding) if encoding == "utf-16" else b"\xfe\xff" + text.encode(encoding)
    path = tmp_path / "unicode.txt"
    path.write_bytes(data)
    s = read_file(path)[0]
    np.testing.assert_allclose(s.intensity, Y)


def test_unnamed_extra_columns_read_column_two_with_a_warning(tmp_path, caplog):
    path = write_text(tmp_path / "three.dat", columns("", Y, np.sqrt(Y)))
    with caplog.at_level("WARNING", logger="mnedge_live.readers"):
        s = read_file(path)[0]
    np.testing.assert_allclose(s.intensity, Y)
    assert "3 columns; column 2 read as the intensity" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mnedge_live.readers"):
        read_file(write_text(tmp_path / "two.dat", rows(" ")))
    assert caplog.text == ""                      # two columns need no choice


def test_a_short_row_in_the_chosen_column_is_refused_with_its_line(tmp_path):
    text = columns("energy i0 mu\n", MONITOR, Y).splitlines(keepends=True)
    text[5] = f"{E[4]} 1e5\n"
    with pytest.raises(ReadError, match="line 6 has no number in column 3"):
        read_file(write_text(tmp_path / "short.dat", "".join(text)))


@pytest.mark.parametrize("sep, hole", [("\t", ""), ("\t", "n/a"), (";", ""), (",", ""), ("  ", "n/a")])
@pytest.mark.parametrize("where", [0, 41])
def test_an_empty_or_non_numeric_cell_in_a_column_not_read_is_passed_over_with_a_warning(tmp_path, caplog, sep,
                                                                                          hole, where):
    text = columns(f"Energy{sep}I0{sep}mu\n", MONITOR, Y, sep=sep).splitlines(keepends=True)
    text[1 + where] = f"{E[where]}{sep}{hole}{sep}{Y[where]}\n"
    with caplog.at_level("WARNING", logger="mnedge_live.readers"):
        (s,) = read_file(write_text(tmp_path / "hole.dat", "".join(text)))
    np.testing.assert_allclose(s.energy, E)
    np.testing.assert_allclose(s.intensity, Y)
    assert f"empty or non-numeric cells in columns that are not read, passed over: column 2 ('I0') on line " \
           f"{2 + where}" in caplog.text


@pytest.mark.parametrize("sep, row, reason", [
    ("\t", "{e}\t\t{y}", "line 42 has no number in column 2 \\(the I0 monitor 'I0' that 'TEY' is divided by\\)"),
    ("\t", "{e}\t2e-10\t", "line 42 has no number in column 3 \\(the intensity\\)"),
    ("  ", "{e}  {y}", "line 42 has no number in column 3"),   # spaces: which cell is missing cannot be told
])
def test_an_empty_cell_in_a_column_that_is_read_is_refused(tmp_path, sep, row, reason):
    text = columns(f"Energy{sep}I0{sep}TEY\n", MONITOR, Y * MONITOR, sep=sep).splitlines(keepends=True)
    text[41] = row.format(e=E[40], y=Y[40]) + "\n"
    with pytest.raises(ReadError, match=reason):
        read_file(write_text(tmp_path / "hole.dat", "".join(text)))


@pytest.mark.parametrize("head, lines", [
    ("Scan 12\n0.5 1.0\nEnergy\tmu\n", "line 2,"),
    ("0.5 1.0\n12\t3\n\nEnergy\tmu\n", "lines 1 and 2,"),
    ("Scan 12\n0.5 1.0\n# Energy\tI0\tmu\n", "line 2,"),
])
def test_one_or_two_rows_of_numbers_before_the_names_are_read_as_metadata_with_a_warning(tmp_path, caplog, head,
                                                                                       lines):
    with caplog.at_level("WARNING", logger="mnedge_live.readers"):
        (s,) = read_file(write_text(tmp_path / "meta.dat", head + rows("\t")))
    np.testing.assert_allclose(s.energy, E)
    np.testing.assert_allclose(s.intensity, Y)
    assert f"{lines} before the column names and the data" in caplog.text and "read as metadata" in caplog.text


@pytest.mark.parametrize("head, body", [
    ("0.5 1.0\n2 3\n4 5\nEnergy\tmu\n", rows("\t")),                              # three rows of numbers
    ("0.5 1.0\nEnergy\n", rows("\t")),                                             # one name for two columns
    ("0.5 1.0\nEnergy\tmu\n", rows("\t", E[:9], Y[:9])),                            # nine rows of data after them
    ("0.5 1.0\nEnergy\tmu\n", "".join(f"{a}\t1e5\t{b}\n" for a, b in zip(E, Y))),   # three columns, two names
])
def test_rows_of_numbers_before_names_are_refused_unless_clearly_metadata(tmp_path, head, body):
    with pytest.raises(ReadError, match="is not two numbers after the data began"):
        read_file(write_text(tmp_path / "meta.dat", head + body))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ReadError, match="no such file"):
        read_file(tmp_path / "absent.csv")
    with pytest.raises(ReadError, match="directory"):
        read_file(tmp_path)


def test_a_pipe_is_refused_not_read_without_its_first_bytes(tmp_path):
    """/dev/stdin or <(...): the format check read its first 64 bytes and the reader the rest; a TEY/I0
    export lost its names line and was read as raw TEY, status ok, a valence 1.3 off."""
    import os
    import threading

    fifo = tmp_path / "scan.csv"
    os.mkfifo(fifo)
    raised: list[Exception] = []

    def read() -> None:
        try:
            read_file(fifo)
        except ReadError as exc:
            raised.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():   # blocked opening the pipe: release it before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("read_file blocked on a named pipe")
    assert raised and "not a regular file" in str(raised[0])


def test_the_measured_spectra_read_as_one_spectrum_each(real_dir):
    files = sorted(real_dir.glob("*.csv"))
    assert len(files) == 4
    for f in files:
        (s,) = read_file(f)
        assert s.energy.size == s.intensity.size > 100
        assert 630 < s.energy.min() < 640 and 655 < s.energy.max() < 670
        assert np.all(np.isfinite(s.intensity))


# ----------------------------------------------------------------------------- EMSA/MSA


def test_emsa_y_written_by_rosettasciio(tmp_path):
    from rsciio.msa import file_writer

    p = tmp_path / "spec.msa"
    file_writer(str(p), signal_dict(Y.astype(np.float64), [energy_axis(E.size)]))
    (s,) = read_file(p)
    np.testing.assert_allclose(s.energy, E, atol=1e-9)
    np.testing.assert_allclose(s.intensity, Y, rtol=1e-5)


def test_emsa_xy_by_hand_with_unknown_extension(tmp_path):
    header = ("#FORMAT      : EMSA/MAS Spectral Data File\n#VERSION     : 1.0\n#TITLE       : by hand\n"
              f"#NPOINTS     : {E.size}\n#NCOLUMNS    : 1\n#XUNITS      : eV\n#YUNITS      : counts\n"
              "#DATATYPE    : XY\n#XPERCHAN    : 0.25\n#OFFSET      : 630.0\n#SPECTRUM    : Spectral Data Starts Here\n")
    p = write_text(tmp_path / "spec.txt", header + rows(", ") + "#ENDOFDATA   : \n")
    (s,) = read_file(p)
    np.testing.assert_allclose(s.energy, E)
    np.testing.assert_allclose(s.intensity, Y)


@pytest.mark.parametrize("units, factor", [("eV", 1.0), ("keV", 1e-3)])
def test_emsa_xy_reads_the_energies_the_file_lists(tmp_path, units, factor):
    """Measured energies unevenly spaced, #OFFSET / #XPERCHAN their first value and mean step: RosettaSciIO
    builds the axis from those two and drops the X column (the measured MnO then read 2.80)."""
    steps = 0.25 * (1 + 0.6 * np.sin(np.arange(E.size - 1) / 7.0))
    e = 630.0 + np.concatenate([[0.0], np.cumsum(steps)])
    header = ("#FORMAT      : EMSA/MAS Spectral Data File\n#VERSION     : 1.0\n#TITLE       : uneven\n"
              f"#NPOINTS     : {E.size}\n#NCOLUMNS    : 1\n#XUNITS      : {units}\n#YUNITS      : counts\n"
              f"#DATATYPE    : XY\n#XPERCHAN    : {steps.mean() * factor:.6g}\n#OFFSET      : {630.0 * factor:.6g}\n"
              "#SPECTRUM    : Spectral Data Starts Here\n")
    text = header + "".join(f"{x * factor:.9g}, {y:.9g}\n" for x, y in zip(e, Y)) + "#ENDOFDATA   : \n"
    (s,) = read_file(write_text(tmp_path / "uneven.msa", text))
    assert np.abs(np.diff(s.energy) - steps).max() < 1e-3   # the file's spacing, not the mean one
    np.testing.assert_allclose(s.energy, e, atol=1e-5)
    np.testing.assert_allclose(s.intensity, Y, rtol=1e-6)


@pytest.mark.parametrize("cut, reason", [
    (lambda t: t[: t.index("0.", len(t) // 2) + 3], "values read where #NPOINTS announces"),   # cut inside a number
    (lambda t: t.replace("#ENDOFDATA   : \n", ""), "no #ENDOFDATA"),
    (lambda t: t.replace(f"#NPOINTS     : {E.size}", f"#NPOINTS     : {E.size + 5}"), "announces"),
    (lambda t: t.replace("#OFFSET      : 630.0\n", ""), "Y data without #OFFSET: the file gives no energy axis"),
    (lambda t: t.replace("#XPERCHAN    : 0.25\n#OFFSET      : 630.0\n", ""), "without #OFFSET and #XPERCHAN"),
])
def test_a_truncated_emsa_file_is_refused(tmp_path, cut, reason):
    header = ("#FORMAT      : EMSA/MAS Spectral Data File\n#VERSION     : 1.0\n#TITLE       : cut\n"
              f"#NPOINTS     : {E.size}\n#NCOLUMNS    : 1\n#XUNITS      : eV\n#YUNITS      : counts\n"
              "#DATATYPE    : Y\n#XPERCHAN    : 0.25\n#OFFSET      : 630.0\n#SPECTRUM    : Spectral Data Starts Here\n")
    text = header + "".join(f"{y},\n" for y in Y) + "#ENDOFDATA   : \n"
    assert len(read_file(write_text(tmp_path / "whole.msa", text))[0].intensity) == E.size
    with pytest.raises(ReadError, match=reason):
        read_file(write_text(tmp_path / "cut.msa", cut(text)))


# ----------------------------------------------------------------------------- HyperSpy / DM


def test_hspy_spectrum_image_is_lazy_with_its_energy_axis(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.random((3, 4, 50)).astype(np.float32)
    p = write_hspy(tmp_path / "si.hspy", data, [nav("y", 3), nav("x", 4), energy_axis(50, 635.0, 0.5)])
    (img,) = read_file(p)
    assert isinstance(img, SpectrumImage)
    import dask.array as da

    assert isinstance(img.data, da.Array)
    assert img.shape == (3, 4) and img.n_pixels == 12
    np.testing.assert_allclose(img.energy, 635.0 + 0.5 * np.arange(50))
    np.testing.assert_allclose(img.data.compute(), data)
    px = img.spectrum(2, 1)
    assert px.pixel == (2, 1)
    np.testing.assert_allclose(px.intensity, data[2, 1])


def _open_files_under(folder: Path) -> int:
    """Files under ``folder`` this process holds open (Linux /proc)."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            count += str(Path(fd).resolve()).startswith(str(folder))
        except OSError:
            pass
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through Linux /proc")
def test_hspy_files_are_not_left_open(tmp_path):
    # RosettaSciIO keeps every lazily opened HyperSpy file open: a run over more files than the
    # open-file limit rejected the rest with "Too many open files"
    for k in range(5):
        read_file(write_hspy(tmp_path / f"one{k}.hspy", Y, [energy_axis(E.size)]))
    assert _open_files_under(tmp_path) == 0
    data = np.random.default_rng(0).random((2, 3, 50)).astype(np.float32)
    (img,) = read_file(write_hspy(tmp_path / "si.hspy", data, [nav("y", 2), nav("x", 3), energy_axis(50)]))
    assert _open_files_under(tmp_path) == 0       # the lazy image opens its file when it is read
    np.testing.assert_allclose(img.data.compute(), data)
    assert _open_files_under(tmp_path) == 1       # and keeps it open for the next reads
    img.close()
    assert _open_files_under(tmp_path) == 0


def test_hspy_single_spectrum_and_line_scan(tmp_path):
    (s,) = read_file(write_hspy(tmp_path / "one.hspy", Y, [energy_axis(E.size)]))
    assert isinstance(s, MeasuredSpectrum)
    np.testing.assert_allclose(s.energy, E)
    np.testing.assert_allclose(s.intensity, Y)
    line = np.stack([Y * (1 + k) for k in range(5)])   # each position its own scale: the order is checked
    (img,) = read_file(write_hspy(tmp_path / "line.hspy", line, [nav("x", 5), energy_axis(E.size)]))
    assert isinstance(img, SpectrumImage) and img.shape == (1, 5)
    np.testing.assert_allclose(img.energy, E)
    np.testing.assert_allclose(np.asarray(img.data).reshape(5, -1), line)


def test_an_energy_axis_marked_as_navigation_wins_over_a_flagged_axis_without_energy_units(tmp_path, caplog):
    """Flags swapped by hand (the eV axis marked navigation, a unitless spatial axis as the signal) made every
    pixel a 4-point "spectrum", each rejected as too short; the units decide, and the reader says so."""
    cube = np.random.default_rng(3).random((3, 4, 60)).astype(np.float32)
    x = {"name": "x", "size": 4, "offset": 0.0, "scale": 1.0, "units": "", "navigate": False}
    e = {**energy_axis(60, 600.0, 0.5), "navigate": True}
    with caplog.at_level("WARNING", logger="mnedge_live.readers.signals"):
        (img,) = read_file(write_hspy(tmp_path / "swapped.hspy", cube, [nav("y", 3), x, e]))
    assert isinstance(img, SpectrumImage) and img.shape == (3, 4)
    np.testing.assert_allclose(img.energy, 600.0 + 0.5 * np.arange(60))
    np.testing.assert_allclose(np.asarray(img.data.compute()), cube)
    assert "marked as navigation" in caplog.text and "read the axis in eV as the energy axis" in caplog.text


def test_hspy_kev_axis_is_converted_and_non_energy_axis_refused(tmp_path):
    (s,) = read_file(write_hspy(tmp_path / "kev.hspy", Y, [energy_axis(E.size, 0.630, 0.00025, "keV")]))
    np.testing.assert_allclose(s.energy, E, atol=1e-6)
    with pytest.raises(ReadError, match="not an energy"):
        read_file(write_hspy(tmp_path / "nm.hspy", Y, [energy_axis(E.size, units="nm")]))


def test_hspy_non_uniform_energy_axis(tmp_path):
    e = 630.0 + np.sort(np.random.default_rng(3).random(50)) * 30.0
    axis = {"name": "Energy", "axis": e, "units": "eV", "navigate": False}
    (s,) = read_file(write_hspy(tmp_path / "nonuniform.hspy", np.linspace(0, 1, 50), [axis]))
    np.testing.assert_allclose(s.energy, e)


def test_hspy_image_is_not_a_spectrum(tmp_path):
    img_axes = [dict(energy_axis(8), name="y", units=""), dict(energy_axis(9), name="x", units="")]
    with pytest.raises(ReadError, match="2-D signal"):
        read_file(write_hspy(tmp_path / "image.hspy", np.zeros((8, 9)), img_axes))


def test_hspy_written_by_h5py_in_the_hyperspy_layout(tmp_path):
    """The layout HyperSpy itself writes, by hand: Experiments/<title>/{data, axis-i}."""
    import h5py

    data = np.arange(2 * 3 * 40, dtype=np.float64).reshape(2, 3, 40)
    p = tmp_path / "byhand.hspy"
    with h5py.File(p, "w") as f:
        f.attrs.update({"file_format": "HyperSpy", "file_format_version": "3.3"})
        g = f.create_group("Experiments/by_hand")
        g.create_dataset("data", data=data)
        for i, ax in enumerate([nav("y", 2), nav("x", 3), energy_axis(40, 620.0, 1.0)]):
            g.create_group(f"axis-{i}").attrs.update(ax)
        g.create_group("metadata/General").attrs["title"] = "by_hand"
        g.create_group("metadata/Signal").attrs["signal_type"] = "EELS"
        g.create_group("original_metadata")
    (img,) = read_file(p)
    assert img.shape == (2, 3)
    np.testing.assert_allclose(img.energy, 620.0 + np.arange(40))
    np.testing.assert_allclose(img.data.compute(), data)


def test_rosettasciio_cannot_write_dm_files():
    """No DM3/DM4 writer exists in RosettaSciIO; DM test files come from tests/dm_writer.py."""
    from rsciio import IO_PLUGINS

    dm = next(p for p in IO_PLUGINS if p["name"] == "DigitalMicrograph")
    assert dm["writes"] is False


@pytest.mark.parametrize("version", [3, 4])
def test_dm_single_spectrum(tmp_path, version):
    from dm_writer import write_dm

    p = write_dm(tmp_path / f"spec.dm{version}", Y.astype(np.float32),
                 [{"offset": 630.0, "scale": 0.25, "units": "eV"}], version=version)
    (s,) = read_file(p)
    assert isinstance(s, MeasuredSpectrum)
    np.testing.assert_allclose(s.energy, E, atol=1e-4)
    np.testing.assert_allclose(s.intensity, Y, rtol=1e-6)


def test_a_dm_spectrum_never_calibrated_is_refused_as_channel_numbers(tmp_path):
    """An uncalibrated DM spectrum (no units, channel 0 at 0, 1 a channel) whose Mn edge sits at channels 608-676
    was read as a stretched edge in eV (an EELSdb spectrum at 0.1 eV a channel: 2.89 against 2.30)."""
    from dm_writer import write_dm

    channels = np.arange(1024, dtype=np.float64)
    y = (1.0 + np.exp(-0.5 * ((channels - 640.0) / 8.0) ** 2)).astype(np.float32)
    p = write_dm(tmp_path / "raw.dm3", y, [{"offset": 0.0, "scale": 1.0, "units": ""}])
    with pytest.raises(ReadError, match="no energy calibration"):
        read_file(p)
    calibrated = write_dm(tmp_path / "calibrated.dm3", y, [{"offset": 0.0, "scale": 1.0, "units": "eV"}])
    assert isinstance(read_file(calibrated)[0], MeasuredSpectrum)   # a 1 eV-a-channel survey calibrated at 0


@pytest.mark.parametrize("version", [3, 4])
def test_dm_spectrum_image_stored_as_energy_planes(tmp_path, version):
    """Gatan stores a spectrum image as (E, Y, X) energy planes; the reader hands out (Y, X, E)."""
    from dm_writer import write_dm

    rng = np.random.default_rng(1)
    cube = rng.random((3, 4, 60)).astype(np.float32)  # (Y, X, E)
    axes = [{"offset": 600.0, "scale": 0.5, "units": "eV"}, {"offset": 0.0, "scale": 2.0, "units": "nm"},
            {"offset": 0.0, "scale": 2.0, "units": "nm"}]
    p = write_dm(tmp_path / f"si.dm{version}", np.moveaxis(cube, -1, 0), axes, version=version, fmt="Spectrum image")
    (img,) = read_file(p)
    assert isinstance(img, SpectrumImage) and img.shape == (3, 4)
    np.testing.assert_allclose(img.energy, 600.0 + 0.5 * np.arange(60), atol=1e-4)
    np.testing.assert_allclose(np.asarray(img.data.compute()), cube)


@pytest.mark.parametrize("suffix", [".dm4", ".hspy"])
def test_a_lazily_read_image_named_by_a_relative_path_is_read_from_that_file_wherever_it_is_computed(
        tmp_path, monkeypatch, suffix):
    """Dask workers compute the chunks in their own folder: a DM image read by a relative path failed there
    (FileNotFoundError in every chunk) or, where that folder held a file of the same name, read its pixels."""
    from dm_writer import write_dm

    axes = [{"offset": 600.0, "scale": 0.5, "units": "eV"}, {"offset": 0.0, "scale": 2.0, "units": "nm"},
            {"offset": 0.0, "scale": 2.0, "units": "nm"}]
    cubes = {}
    for name, seed in (("here", 1), ("there", 2)):
        (tmp_path / name).mkdir()
        cubes[name] = np.random.default_rng(seed).random((3, 4, 60)).astype(np.float32)
        if suffix == ".dm4":
            write_dm(tmp_path / name / f"EELS Spectrum Image{suffix}", np.moveaxis(cubes[name], -1, 0), axes,
                     version=4, fmt="Spectrum image")
        else:
            write_hspy(tmp_path / name / f"EELS Spectrum Image{suffix}", cubes[name],
                       [nav("y", 3), nav("x", 4), energy_axis(60, 600.0, 0.5)])
    monkeypatch.chdir(tmp_path / "here")
    (img,) = read_file(f"EELS Spectrum Image{suffix}")
    monkeypatch.chdir(tmp_path / "there")         # where a worker may run: a file of the same name
    np.testing.assert_allclose(np.asarray(img.data.compute()), cubes["here"])


def test_dm_image_is_not_a_spectrum(tmp_path):
    from dm_writer import write_dm

    px = {"offset": 0.0, "scale": 1.0, "units": "nm"}
    p = write_dm(tmp_path / "image.dm3", np.zeros((8, 9), np.float32), [px, px], signal="", fmt="Image")
    with pytest.raises(ReadError, match="2-D signal"):
        read_file(p)


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("ny, nx", [(4, 1), (1, 4)])
def test_dm_spectrum_image_of_one_row_or_one_column(tmp_path, version, ny, nx):
    """RosettaSciIO flags both spatial axes of a DM spectrum image as the signal: with a length-1
    axis dropped first, the other spatial axis was taken as the energy axis and the file refused."""
    from dm_writer import write_dm

    cube = np.random.default_rng(2).random((ny, nx, 60)).astype(np.float32)  # (Y, X, E)
    axes = [{"offset": 600.0, "scale": 0.5, "units": "eV"}, {"offset": 0.0, "scale": 2.0, "units": "nm"},
            {"offset": 0.0, "scale": 2.0, "units": "nm"}]
    p = write_dm(tmp_path / f"si{ny}x{nx}.dm{version}", np.moveaxis(cube, -1, 0), axes, version=version,
                 fmt="Spectrum image")
    (img,) = read_file(p)
    assert isinstance(img, SpectrumImage) and img.shape == (ny, nx)
    np.testing.assert_allclose(img.energy, 600.0 + 0.5 * np.arange(60), atol=1e-4)
    np.testing.assert_allclose(np.asarray(img.data.compute()), cube)


def test_dm_single_spectrum_stored_as_a_one_pixel_image(tmp_path):
    from dm_writer import write_dm

    axes = [{"offset": 630.0, "scale": 0.25, "units": "eV"}, {"offset": 0.0, "scale": 1.0, "units": "nm"},
            {"offset": 0.0, "scale": 1.0, "units": "nm"}]
    (s,) = read_file(write_dm(tmp_path / "one.dm4", Y.astype(np.float32)[:, None, None], axes, version=4,
                              fmt="Spectrum image"))
    assert isinstance(s, MeasuredSpectrum) and s.pixel is None
    np.testing.assert_allclose(s.intensity, Y, rtol=1e-6)


@pytest.mark.parametrize("ny, nx", [(4, 1), (1, 4), (1, 1)])
def test_hspy_navigation_shape_is_kept_as_stored(tmp_path, ny, nx):
    """An N x 1 image (N rows, one column) stays N x 1: it was read as 1 x N, pixel (i, 0) as (0, i)."""
    data = np.random.default_rng(4).random((ny, nx, 50)).astype(np.float32)
    (item,) = read_file(write_hspy(tmp_path / "si.hspy", data, [nav("y", ny), nav("x", nx), energy_axis(50)]))
    if ny == nx == 1:   # one pixel: a single spectrum
        assert isinstance(item, MeasuredSpectrum)
        np.testing.assert_allclose(item.intensity, data[0, 0])
        return
    assert isinstance(item, SpectrumImage) and item.shape == (ny, nx)
    np.testing.assert_allclose(item.data.compute(), data)
    assert item.spectrum(ny - 1, nx - 1).pixel == (ny - 1, nx - 1)
    np.testing.assert_allclose(item.spectrum(ny - 1, nx - 1).intensity, data[-1, -1])


def test_hspy_length_one_navigation_axes_beyond_two_are_dropped(tmp_path):
    data = np.random.default_rng(5).random((1, 3, 1, 50)).astype(np.float32)
    (img,) = read_file(write_hspy(tmp_path / "z.hspy", data,
                                  [nav("z", 1), nav("y", 3), nav("x", 1), energy_axis(50)]))
    assert img.shape == (3, 1)
    np.testing.assert_allclose(img.data.compute(), data[0])


def test_every_signal_of_a_dm_file_is_reported(tmp_path):
    """A signal that is no spectrum, beside one that is, was dropped without a word."""
    from dm_writer import write_dm

    cube = np.random.default_rng(6).random((4, 1, 60)).astype(np.float32)
    si_axes = [{"offset": 600.0, "scale": 0.5, "units": "eV"}, {"offset": 0.0, "scale": 2.0, "units": "nm"},
               {"offset": 0.0, "scale": 2.0, "units": "nm"}]
    px = {"offset": 0.0, "scale": 1.0, "units": "nm"}
    survey = {"data": np.zeros((8, 9), np.float32), "axes": [px, px], "signal": "", "fmt": "Image"}
    spectrum = {"data": Y.astype(np.float32), "axes": [{"offset": 630.0, "scale": 0.25, "units": "eV"}]}
    p = write_dm(tmp_path / "several.dm4", np.moveaxis(cube, -1, 0), si_axes, version=4, fmt="Spectrum image",
                 more=[survey, spectrum])
    image, refused, single = read_file(p)
    assert isinstance(image, SpectrumImage) and image.index == 0 and image.shape == (4, 1)
    assert isinstance(refused, RefusedSignal) and refused.index == 1 and refused.file == str(p)
    assert "2-D signal" in refused.reason
    assert isinstance(single, MeasuredSpectrum) and single.index == 2
    image.close()
    only_images = write_dm(tmp_path / "images.dm4", survey["data"], survey["axes"], signal="", fmt="Image",
                           more=[survey])
    with pytest.raises(ReadError, match="signal 0: 2-D signal.*signal 1: 2-D signal"):
        read_file(only_images)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through Linux /proc")
def test_unchunked_hspy_image_stays_lazy_and_its_file_is_released(tmp_path, monkeypatch):
    """RosettaSciIO cannot read unchunked HDF5 data lazily; the image was loaded whole into memory."""
    from mnedge_live import readers
    from mnedge_live.readers import signals

    data = np.random.default_rng(7).random((6, 5, 40)).astype(np.float32)
    p = write_contiguous_hspy(tmp_path / "contiguous.hspy", data, scale=1.0)
    monkeypatch.setattr(signals, "CONTIGUOUS_CHUNK_BYTES", 2 * 5 * 40 * 4)   # two rows of the image a chunk
    (img,) = read_file(p)
    assert img.shape == (6, 5)
    assert img.data.chunks == ((2, 2, 2), (5,), (40,))
    # The Dask graph reads from the HDF5 dataset, not from an array loaded into memory.
    sources = [v for v in dict(img.data.__dask_graph__()).values() if isinstance(v, readers.HDF5Dataset)]
    assert [(s.filename, s.name) for s in sources] == [(str(p.resolve()), "/Experiments/contiguous/data")]
    np.testing.assert_allclose(img.data.compute(), data)
    assert _open_files_under(tmp_path) == 1
    np.testing.assert_allclose(img.spectrum(5, 4).intensity, data[5, 4])
    img.close()
    assert _open_files_under(tmp_path) == 0
    # A single spectrum stored unchunked is loaded, and its file closed at once.
    (s,) = read_file(write_contiguous_hspy(tmp_path / "one.hspy", data[:1, :1], scale=1.0))
    assert isinstance(s, MeasuredSpectrum) and _open_files_under(tmp_path) == 0


@pytest.mark.parametrize("shape, itemsize, target, expected", [
    ((256, 256, 1000), 4, 32 * 2**20, (32, 256, 1000)),   # whole rows of the image
    ((3, 5, 263), 4, 32 * 2**20, (3, 5, 263)),            # a small image: one chunk
    ((4, 3, 10), 8, 100, (1, 1, 10)),                     # below one spectrum a chunk: single spectra
    ((2, 1000), 4, 400, (1, 100)),                        # a spectrum larger than a chunk is cut
])
def test_contiguous_chunks_are_whole_trailing_rows(shape, itemsize, target, expected):
    from mnedge_live.readers import contiguous_chunks

    assert contiguous_chunks(shape, itemsize, target) == expected


def test_hdf5_dataset_source_pickles_without_an_open_file_and_bounds_open_files(tmp_path, monkeypatch):
    """The lazy arrays' source travels to Dask workers as a file name, and a process keeps at most
    MAX_OPEN_HDF5 files open; a rewritten file is read afresh."""
    import pickle

    from mnedge_live.readers import hdf5_cache

    monkeypatch.setattr(hdf5_cache, "MAX_OPEN_HDF5", 2)
    images = []
    for k in range(4):
        data = np.full((2, 3, 50), float(k), np.float32)
        (img,) = read_file(write_hspy(tmp_path / f"si{k}.hspy", data, [nav("y", 2), nav("x", 3), energy_axis(50)]))
        images.append(img)
    for k, img in enumerate(images):
        copy = pickle.loads(pickle.dumps(img.data))
        assert float(copy[1, 2, 0].compute()) == k
        assert _open_files_under(tmp_path) <= 2
    p = tmp_path / "si0.hspy"
    write_hspy(p, np.full((2, 3, 50), 7.0, np.float32), [nav("y", 2), nav("x", 3), energy_axis(50)])
    (again,) = read_file(p)
    assert float(again.data[0, 0, 0].compute()) == 7.0
    for img in images:
        img.close()
    again.close()
    assert _open_files_under(tmp_path) == 0


IDX = np.arange(len(E))


@pytest.mark.parametrize("name, text", [
    ("pandas.csv", ",energy,intensity\n" + "".join(f"{i},{a},{b}\n" for i, a, b in zip(IDX, E, Y))),
    ("unnamed.csv", "Unnamed: 0,energy,intensity\n" + "".join(f"{i},{a},{b}\n" for i, a, b in zip(IDX, E, Y))),
    ("r_quoted.csv", '"","Energy (eV)","Intensity"\n' + "".join(f'"{i + 1}",{a},{b}\n' for i, a, b in zip(IDX, E, Y))),
    ("point.dat", "Point\tEnergy (eV)\tIntensity\n" + "".join(f"{i + 1}\t{a}\t{b}\n" for i, a, b in zip(IDX, E, Y))),
    ("time.dat", "Time (s)\tMono Energy\tNormalized TEY\n" + "".join(f"{i / 2}\t{a}\t{b}\n" for i, a, b in zip(IDX, E, Y))),
    ("channel.dat", "Channel\tEnergy\tTEY\n" + "".join(f"{i + 1}\t{a}\t{b}\n" for i, a, b in zip(IDX, E, Y))),
    ("ssrl.dat", "SSRL    EXAFS Data Collector 1.3\nMnO\nPTS:140 COLS: 3\nData:\nReal time clock\nRequested Energy\n"
     "mu\n" + "".join(f"{i / 2}   {a}   {b}\n" for i, a, b in zip(IDX, E, Y))),
])
def test_an_index_or_clock_in_column_one_gives_way_to_the_column_named_energy(tmp_path, name, text):
    path = write_text(tmp_path / name, text)
    s = read_file(path)[0]
    np.testing.assert_allclose(s.energy, E)
    np.testing.assert_allclose(s.intensity, Y)
    np.testing.assert_allclose(read_file(path, column="3")[0].intensity, Y)
    with pytest.raises(ReadError, match="column 1 is not an intensity column"):
        read_file(path, column="1")
    with pytest.raises(ReadError, match="column 2 is not an intensity column: .* column 2 is the energy"):
        read_file(path, column="2")


def test_an_index_in_column_one_without_an_energy_column_is_refused(tmp_path):
    named = write_text(tmp_path / "named.dat", "Point\tX\tIntensity\n"
                       + "".join(f"{i + 1}\t{a}\t{b}\n" for i, a, b in zip(IDX, E, Y)))
    with pytest.raises(ReadError, match="column 1 is named 'Point': a point index .* column 2 .* could be the energy"):
        read_file(named)
    bare = write_text(tmp_path / "bare.dat", "".join(f"{i + 1}\t{a}\t{b}\n" for i, a, b in zip(IDX, E, Y)))
    with pytest.raises(ReadError, match="column 1 counts points .* column 2 .* could be the energy"):
        read_file(bare)


def tabbed(*cols) -> str:
    return "".join("\t".join(str(c) for c in row) + "\n" for row in zip(E, *cols))


@pytest.mark.parametrize("name, head", [
    ("units_row.dat", "Energy\tI0\tmu\neV\tnA\ta.u.\n"),
    ("units_row_commented.dat", "# Energy\tI0\tmu\n# eV\tnA\ta.u.\n"),
    ("comment_between.dat", "Energy\tI0\tmu\n# scan started\n"),
    ("xdi_no_label.xdi", "# XDI/1.0\n# Column.1: energy eV\n# Column.2: i0\n# Column.3: mu\n# ///\n"
                         "# Mn L edge scan of sample X\n#----\n"),
])
def test_names_are_kept_past_a_units_row_or_a_comment_and_xdi_column_headers_are_read(tmp_path, name, head):
    # the lost names left column 2, the I0 monitor, read as the spectrum
    s = read_file(write_text(tmp_path / name, head + tabbed(MONITOR, Y)))[0]
    np.testing.assert_allclose(s.intensity, Y)


@pytest.mark.parametrize("head, cols", [
    ("Energy\tTEY\tI0\tTime\n", lambda i0: (Y * i0, i0, IDX)),
    ("Energy\tI0\tTEY\tTime\n", lambda i0: (i0, Y * i0, IDX)),
    ("# energy i0 itey\n", lambda i0: (i0, Y * i0)),
])
def test_a_raw_yield_beside_its_i0_monitor_is_read_divided_by_it_whatever_the_order(tmp_path, caplog, head, cols):
    i0 = np.linspace(2.3e-10, 2.1e-10, len(E))
    with caplog.at_level("WARNING", logger="mnedge_live.readers"):
        s = read_file(write_text(tmp_path / "yield.dat", head + tabbed(*cols(i0))))[0]
    np.testing.assert_allclose(s.intensity, Y, rtol=1e-9)
    assert "is a raw yield: read divided by the I0 monitor" in caplog.text


@pytest.mark.parametrize("head", ["Energy\tTEY\tI0\tTFY\n", "Energy\tI0\tTEY\tTFY\n", "pgm_energy\tidio\tifiofb\tmacr16\n",
                                  "Energy\tTEY\tTime\tRing current\n"])
def test_raw_yields_that_cannot_be_told_apart_or_without_a_monitor_are_refused(tmp_path, head):
    i0 = np.linspace(2.3e-10, 2.1e-10, len(E))
    path = write_text(tmp_path / "yields.dat", head + tabbed(Y * i0, i0, 2 * Y * i0))
    with pytest.raises(ReadError, match="raw yield.*--column"):
        read_file(path)


def test_a_column_ratio_reads_a_yield_divided_by_its_monitor(tmp_path):
    i0 = np.linspace(2.3e-10, 2.1e-10, len(E))
    path = write_text(tmp_path / "yields.dat", "Energy\tTEY\tI0\tTFY\n" + tabbed(Y * i0, i0, 2 * Y * i0))
    np.testing.assert_allclose(read_file(path, column="TFY/I0")[0].intensity, 2 * Y, rtol=1e-9)
    np.testing.assert_allclose(read_file(path, column="2/3")[0].intensity, Y, rtol=1e-9)
    np.testing.assert_allclose(read_file(path, column="TEY")[0].intensity, Y * i0, rtol=1e-9)   # named: as it is


def test_spec_labels_are_split_on_two_spaces_and_every_scan_is_read(tmp_path):
    first = "#S 12  ascan  energy 635 663\n#N 4\n#L Energy  Ring current  I0  mu\n" + columns(
        "", np.full_like(Y, 400.0), MONITOR, Y, sep="  ")
    second = "\n#S 13  ascan  energy 635 663\n#L Energy  Ring current  I0  mu\n" + columns(
        "", np.full_like(Y, 399.0), MONITOR, 2 * Y, sep="  ")
    aborted = "\n#S 14  ascan  energy 635 663\n#L Energy  Ring current  I0  mu\n#C aborted\n"
    alignment = "\n#S 15  ascan  samx -1 1\n#L samx  diode\n" + "".join(f"{x:.2f}  {x * x:.4f}\n"
                                                                     for x in np.linspace(-1, 1, 21))
    path = write_text(tmp_path / "scans.spec", "#F scans.spec\n#O0 energy  samx\n" + first + second + aborted + alignment)
    items = read_file(path)
    assert [type(it).__name__ for it in items] == ["MeasuredSpectrum", "MeasuredSpectrum", "RefusedSignal",
                                                   "MeasuredSpectrum"]
    assert [it.index for it in items] == [0, 1, 2, 3]
    assert [it.label for it in items if isinstance(it, MeasuredSpectrum)] == ["scan 12", "scan 13", "scan 15"]
    np.testing.assert_allclose(items[0].energy, E)
    np.testing.assert_allclose(items[0].intensity, Y)
    np.testing.assert_allclose(items[1].intensity, 2 * Y)
    assert items[2].reason.startswith("scan 14 not read:") and "no numeric" in items[2].reason
    np.testing.assert_allclose(items[3].energy, np.linspace(-1, 1, 21))   # read; the engine says it misses the edge
    one = read_file(write_text(tmp_path / "one.spec", first))
    assert len(one) == 1 and one[0].label is None
    np.testing.assert_allclose(one[0].intensity, Y)


def test_a_broken_spec_scan_is_named_at_its_line_of_the_file(tmp_path):
    good = "#S 1  ascan  energy 635 663\n#L Energy  mu\n" + "".join(f"{a}  {b}\n" for a, b in zip(E, Y))
    bad = "#S 2  ascan  energy 635 663\n#L Energy  mu\n636.0  0.1\n637.0\n638.0  0.2\n"
    text = "#F f.spec\n" + good + bad
    items = read_file(write_text(tmp_path / "f.spec", text))
    line = text.splitlines().index("637.0") + 1
    assert isinstance(items[1], RefusedSignal) and f"line {line} " in items[1].reason, items[1].reason


@pytest.mark.parametrize("sep", ["   ", " ", "\t", ";", " ; "])
@pytest.mark.parametrize("head", ["", "Energy{sep}Intensity\n", "# E I\n"])
def test_decimal_commas_between_spaces_tabs_or_semicolons_are_read_with_one_warning(tmp_path, caplog, sep, head):
    path = write_text(tmp_path / "comma.txt", head.format(sep=sep) + rows(sep).replace(".", ","))
    with caplog.at_level("WARNING", logger="mnedge_live.readers"):
        (s,) = read_file(path)
    np.testing.assert_allclose(s.energy, E)
    np.testing.assert_allclose(s.intensity, Y)
    assert caplog.text.count("decimal commas read as decimal points") == 1


@pytest.mark.parametrize("name, text, reason", [
    ("mixed.txt", rows("\t").replace(".", ",", 100), "decimal commas \\(line 1: '630,0'\\) and decimal points"),
    ("comma.csv", "".join(f"{a:.5f},{b:.6f}\n" for a, b in zip(E, Y)).replace(".", ","),
     "numbers with decimal commas separated by commas \\(line 1: '630,00000,0,050000'\\)"),
    ("comma_space.csv", "E, I\n" + "".join(f"{a:.5f}, {b:.6f}\n" for a, b in zip(E, Y)).replace(".", ","),
     "decimal commas separated by commas"),
])
def test_decimal_commas_that_cannot_be_told_from_separators_or_points_are_refused(tmp_path, name, text, reason):
    # the comma-separated ones read as four columns of integers (energy 630, 630, 630, ...) with a warning
    with pytest.raises(ReadError, match=reason):
        read_file(write_text(tmp_path / name, text))


def test_space_separated_numbers_mixing_decimal_commas_and_points_get_the_hint(tmp_path):
    path = write_text(tmp_path / "comma.txt", "Energy  Intensity\n" + "".join(
        f"{a}   {b}\n".replace(".", ",", 1) for a, b in zip(E, Y)))
    with pytest.raises(ReadError, match="no numeric .* decimal commas"):
        read_file(path)


@pytest.mark.parametrize("head", ["Mono Energy (eV)     I0     TEY     Intensity\n",
                                  "# Mono Energy (eV) I0 TEY Intensity\n"])
def test_a_spaced_header_whose_bracketed_unit_follows_a_two_word_name_is_read(tmp_path, head):
    # "5 fields for 4 columns" before: the unit was joined to "Energy" only
    s = read_file(write_text(tmp_path / "mono.dat", columns(head, MONITOR, 3 * Y, Y, sep="     ")))[0]
    np.testing.assert_allclose(s.intensity, Y)


def test_spec_label_line_with_spaced_labels_does_not_keep_the_l(tmp_path):
    head = "#S 1  ascan  energy 635 663\n#L Energy  Ring current  mu  I0\n"
    path = write_text(tmp_path / "ring.spec", head + columns("", np.full_like(Y, 400.0), Y, MONITOR, sep="  "))
    np.testing.assert_allclose(read_file(path)[0].intensity, Y)
    with pytest.raises(ReadError, match="the columns are Energy, Ring current, mu, I0"):
        read_file(path, column="pfy")


@pytest.mark.parametrize("head", ["Energy\tRing current\tTEY/I0\tI0\tSeconds\n", "Energy\tRing current\tTEY_norm\tTime\n",
                                  "Energy\tI0\tTFY / I0\tTime\n", "Energy\tnorm TEY\tI0\tTime\n"])
def test_a_yield_named_as_divided_by_its_monitor_is_read_as_the_spectrum(tmp_path, head):
    names = head.strip().split("\t")
    cols = [Y if ("/" in n or "norm" in n) else np.full_like(Y, 2.2e-10) for n in names[1:]]
    (s,) = read_file(write_text(tmp_path / "ratio.dat", head + tabbed(*cols)))
    np.testing.assert_allclose(s.intensity, Y)


def test_several_yields_divided_by_their_monitor_are_refused_naming_them(tmp_path):
    path = write_text(tmp_path / "ratios.dat", "Energy\tTEY/I0\tTFY/I0\tI0\n" + tabbed(Y, 2 * Y, np.full_like(Y, 2e-10)))
    with pytest.raises(ReadError, match="several normalized yields.*TEY/I0, TFY/I0"):
        read_file(path)
    np.testing.assert_allclose(read_file(path, column="TFY/I0")[0].intensity, 2 * Y)


@pytest.mark.parametrize("head", ["Energy (keV)\tIntensity\n", "# Energy [keV]\tmu\n", "Energy\tmu\nkeV\ta.u.\n"])
def test_an_energy_column_the_header_states_in_kev_is_read_in_ev_with_a_warning(tmp_path, caplog, head):
    path = write_text(tmp_path / "kev.dat", head + "".join(f"{e / 1000:.8f}\t{y}\n" for e, y in zip(E, Y)))
    with caplog.at_level("WARNING", logger="mnedge_live.readers"):
        (s,) = read_file(path)
    np.testing.assert_allclose(s.energy, E, rtol=1e-9)
    assert "keV" in caplog.text


@pytest.mark.parametrize("head", ["", "Energy\tIntensity\n", "Energy (eV)\tmu\n"])
def test_an_energy_column_without_a_stated_kev_unit_is_read_as_it_is(tmp_path, head):
    path = write_text(tmp_path / "e.dat", head + "".join(f"{e / 1000:.8f}\t{y}\n" for e, y in zip(E, Y)))
    (s,) = read_file(path)
    np.testing.assert_allclose(s.energy, E / 1000, rtol=1e-9)


def test_a_table_of_named_spectra_reads_each_as_its_own_spectrum(tmp_path):
    y2, y3 = np.round(Y * 0.5 + 0.1, 6), np.round(Y[::-1], 6)
    text = "Energy,MnO,Mn2O3,MnO2\n" + "".join(f"{a},{b},{c},{d}\n" for a, b, c, d in zip(E, Y, y2, y3))
    items = read_file(write_text(tmp_path / "supplementary.csv", text))
    assert [(it.index, it.label) for it in items] == [(0, "MnO"), (1, "Mn2O3"), (2, "MnO2")]
    for it, y in zip(items, (Y, y2, y3)):
        assert isinstance(it, MeasuredSpectrum) and np.array_equal(it.energy, E) and np.array_equal(it.intensity, y)
    # one column named: that one only, as before
    (one,) = read_file(write_text(tmp_path / "named.csv", text), column="Mn2O3")
    assert one.label is None and np.array_equal(one.intensity, y2)


def pairs_table(header: str, first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray],
                scale: float = 1.0) -> str:
    """X/Y pairs side by side, the shorter pair's cells empty below its end; energies divided by ``scale``."""
    def cells(pair, i):
        return f"{pair[0][i] / scale:.7f},{pair[1][i]}" if i < pair[0].size else ","
    n = max(first[0].size, second[0].size)
    return header + "\n" + "".join(f"{cells(first, i)},{cells(second, i)}\n" for i in range(n))


E2 = np.round(np.arange(628.0, 670.0, 0.2), 4)
Y2 = np.round(np.exp(-0.5 * ((E2 - 642.0) / 0.9) ** 2), 6)


@pytest.mark.parametrize("header, scale, longer_first", [
    ("E1 (keV),MnO,E2 (keV),LaMnO3", 1000.0, True),   # named axes in keV, the first pair the longer
    ("X,MnO,X,Mn2O3", 1.0, False),                    # unnamed axes (rising throughout), the second the longer
])
def test_x_y_pairs_of_different_lengths_each_read_against_their_own_axis(tmp_path, header, scale, longer_first):
    """Each spectrum reads against the axis on its left; the rows where only one pair goes on are read, with
    the other pair's cells empty (below its end, or before it: not taken for a footer)."""
    short = (E2[:50], Y2[:50])
    pairs = ((E, Y), short) if longer_first else (short, (E2, Y2))
    items = read_file(write_text(tmp_path / "pairs.csv", pairs_table(header, *pairs, scale=scale)))
    assert [it.label for it in items] == [header.split(",")[1], header.split(",")[3]]
    for it, (e, y) in zip(items, pairs):
        assert np.allclose(it.energy, e, rtol=0, atol=1e-6) and np.array_equal(it.intensity, y)


def test_a_pair_with_one_cell_missing_is_refused_by_line_and_column(tmp_path):
    lines = ["E1,MnO,E2,LaMnO3"] + [f"{a},{b},{a},{b}" for a, b in zip(E, Y)]
    lines[5] = f"{E[4]},{Y[4]},{E[4]},"
    with pytest.raises(ReadError, match=r"line 6 has no number in column 4 \('LaMnO3'"):
        read_file(write_text(tmp_path / "hole.csv", "\n".join(lines) + "\n"))


@pytest.mark.parametrize("header", ["energy,MnO,sigma", "energy,sample,fit,background", "energy,mu,scan2"])
def test_uncertainties_fits_and_known_columns_keep_one_spectrum(tmp_path, header):
    """A spectrum with its error bars or fit, and a table naming a known column, still read as one spectrum."""
    n = header.count(",")
    text = header + "\n" + "".join(f"{a}," + ",".join([str(b)] * n) + "\n" for a, b in zip(E, Y))
    (one,) = read_file(write_text(tmp_path / "one.csv", text))
    assert one.label is None and np.array_equal(one.intensity, Y)


def test_a_monitor_beside_unnamed_spectra_is_still_refused(tmp_path):
    """A monitor in column 2 and no spectrum named: refused as before, not read as three spectra."""
    text = "energy,i0,sample,reference\n" + "".join(f"{a},1e5,{b},{b}\n" for a, b in zip(E, Y))
    with pytest.raises(ReadError, match="is a monitor"):
        read_file(write_text(tmp_path / "mon.csv", text))


def test_an_unnamed_table_reads_its_second_column_only(tmp_path):
    """Unnamed, a third column may be the second's uncertainty: one spectrum, as before."""
    text = "".join(f"{a} {b} {b * 0.01}\n" for a, b in zip(E, Y))
    (one,) = read_file(write_text(tmp_path / "unnamed.dat", text))
    assert one.label is None and np.array_equal(one.intensity, Y)


def test_a_clock_and_an_energy_only_is_refused_as_having_no_intensity(tmp_path):
    """Column 1 a clock, column 2 the energy: nothing is left to read (was an IndexError)."""
    text = "Time,Energy\n" + "".join(f"{k * 0.1:.1f},{a}\n" for k, a in enumerate(E))
    with pytest.raises(ReadError, match=r"no intensity column: the file has 2 columns \(Time, Energy\)"):
        read_file(write_text(tmp_path / "clock.csv", text))


@pytest.mark.parametrize("header", ["Energy,MnO,MnO_err", "Energy,MnO,dMnO", "Energy,sample,sample_std",
                                    "Energy,Sample,Temperature", "Energy,It,Iref", "Energy,MnO,MnO fit",
                                    "Energy,Sample,Mono_angle", "Energy,sample,ring current"])
def test_errors_fits_and_instrument_columns_are_no_spectra(tmp_path, header):
    """Each of these tables holds one spectrum (column 2), as before tables of several were read."""
    third = {"Mono_angle": np.linspace(20.1, 18.3, E.size), "ring current": 400 + 1e-3 * np.sin(E)}.get(
        header.split(",")[2], 0.3 * Y + 0.01)
    text = header + "\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(E, Y, third))
    (one,) = read_file(write_text(tmp_path / "t.csv", text))
    assert one.label is None and np.array_equal(one.intensity, Y)


def test_tab_separated_pairs_keep_their_empty_first_cells(tmp_path):
    """``\t\t657.5\t0.3``: the first pair has ended; the row is the second pair's, not the first's."""
    short = (E2[:50], Y2[:50])
    text = pairs_table("E1\tMnO\tE2\tMn2O3", short, (E2, Y2)).replace(",", "\t")
    items = read_file(write_text(tmp_path / "pairs.tsv", text))
    assert [it.energy.size for it in items] == [50, E2.size]
    assert np.array_equal(items[0].intensity, short[1]) and np.array_equal(items[1].intensity, Y2)


def test_a_row_with_an_empty_first_cell_after_one_spectrum_is_a_footer(tmp_path, caplog):
    """A spreadsheet's row of column means under the data: passed over with a note, as any footer."""
    text = "Energy,I0,TEY,mu\n" + "".join(f"{a},1e5,{b * 1e5},{b}\n" for a, b in zip(E, Y)) + ",100012.3,52.1,0.31\n"
    with caplog.at_level("WARNING", logger="mnedge_live.readers"):
        (one,) = read_file(write_text(tmp_path / "means.csv", text))
    assert np.array_equal(one.intensity, Y) and "ignored as a footer" in caplog.text


def test_columns_passed_over_are_named_in_the_note(tmp_path, caplog):
    text = "Energy,Sample1,Sample2,MnO2 std,Keithley3\n" + "".join(
        f"{a},{b},{2 * b},{0.1 * b},{3 * b}\n" for a, b in zip(E, Y))
    with caplog.at_level("WARNING", logger="mnedge_live.readers"):
        items = read_file(write_text(tmp_path / "t.csv", text))
    assert [it.label for it in items] == ["Sample1", "Sample2"]
    assert "passed over: 'MnO2 std' (an uncertainty" in caplog.text and "'Keithley3' (an instrument column)" in caplog.text
