"""Readout plots of derived runs (``--plot DIR``): valence against the source event number."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class RunPlotter:
    """Collects the rows of each derived run and writes ``DIR/mnedge_<uid8>_valence.png`` at its stop."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: dict[str, list[tuple[int, float, float]]] = {}
        self.desc_run: dict[str, str] = {}
        self.parent: dict[str, str] = {}
        self.written: list[str] = []

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self.rows[doc["uid"]] = []
            self.parent[doc["uid"]] = doc.get("parent_uid", "")
        elif name == "descriptor":
            self.desc_run[doc["uid"]] = doc["run_start"]
        elif name in ("event", "event_page"):
            run = self.desc_run.get(doc["descriptor"])
            d = doc["data"]
            seq, val, std = (np.atleast_1d(d[k]) for k in ("source_seq_num", "valence", "valence_std"))
            self.rows.setdefault(run, []).extend(zip(seq.tolist(), val.tolist(), std.tolist()))
        elif name == "stop":
            rows = self.rows.pop(doc["run_start"], [])
            self.written.append(self._write(doc["run_start"], rows))

    def _write(self, uid: str, rows: list[tuple[int, float, float]]) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        if rows:
            s, v, e = (np.asarray(x, float) for x in zip(*rows))
            ax.errorbar(s, v, yerr=e, fmt="o", ms=3)
        ax.set_xlabel("source event (seq_num)")
        ax.set_ylabel("Mn valence")
        ax.set_ylim(1.8, 4.2)
        ax.set_title(f"source run {self.parent.get(uid, '')[:8]}")
        fig.tight_layout()
        path = self.dir / f"mnedge_{self.parent.get(uid, uid)[:8]}_valence.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return str(path)
