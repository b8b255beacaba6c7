"""Traffic models (see model.py for what one is, scenarios/README.md for their
keys). Registering a model is one line in MODELS; the scenario parser, the
runner, the traffic processes (`python -m bpfkit.lab.traffic`), the report and
the bench find it here by its `kind`."""

from __future__ import annotations

from dataclasses import fields

from bpfkit.errors import UsageError
from bpfkit.lab.traffic.bulk import Bulk
from bpfkit.lab.traffic.cbr import Cbr
from bpfkit.lab.traffic.model import Figures, TrafficModel
from bpfkit.lab.traffic.request_response import RequestResponse

MODELS: dict[str, type[TrafficModel]] = {m.kind: m for m in (Bulk, RequestResponse, Cbr)}

__all__ = ["MODELS", "Figures", "TrafficModel", "from_dict", "model"]


def model(kind: object) -> type[TrafficModel]:
    """The model whose kind is `kind`, or one UsageError that lists the known ones."""
    if isinstance(kind, str) and kind in MODELS:
        return MODELS[kind]
    raise UsageError(f"traffic kind {kind!r} is not one this bpfkit knows ({', '.join(MODELS)})",
                     hint="results written by another bpfkit version need that version's report")


def from_dict(data: dict) -> TrafficModel:
    """A model from its to_dict() (results.json's `scenario.traffic`, a traffic process's job).
    Keys the model does not have are ignored: results of bpfkit before the traffic
    models (2026-12) stored every kind's keys for every kind."""
    cls = model(data.get("kind"))
    try:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
    except TypeError as exc:  # a value the model needs is missing
        raise UsageError(f"traffic {data.get('kind')!r}: {exc}") from None
