"""Game presets: data files that expand into a server spec (docs/presets.md)."""

from manman.presets.catalog import PresetCatalog, load_file, operator_dir, shipped_dir
from manman.presets.expand import Expansion, expand, redact
from manman.presets.model import Preset, Variable, parse_preset

__all__ = ["Expansion", "Preset", "PresetCatalog", "Variable", "expand", "load_file",
           "operator_dir", "parse_preset", "redact", "shipped_dir"]
