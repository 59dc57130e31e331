"""The presets a service offers: the shipped ones plus an operator's folder, loaded at start-up."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from manman.errors import NotFound, StartupError
from manman.presets.model import MAX_FILE_BYTES, Preset, parse_preset

MAX_FILES = 1000


def shipped_dir() -> Traversable:
    return files("manman.presets") / "games"


def operator_dir(data_dir: Path) -> Path:
    """Where an operator adds presets: `presets/` under the host's (or a standalone worker's)
    data dir."""
    return data_dir / "presets"


def _toml_files(folder: Traversable) -> list[Traversable]:
    if not folder.is_dir():
        return []
    found = sorted((f for f in folder.iterdir() if f.name.endswith(".toml") and f.is_file()),
                   key=lambda f: f.name)
    if len(found) > MAX_FILES:
        raise StartupError(f"presets: more than {MAX_FILES} files in {folder}")
    return found


def load_file(path: Traversable) -> Preset:
    """One preset file; StartupError names the file and the key at fault."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # a bigger file is refused, not read whole
        return parse_preset(data)
    except OSError as e:
        raise StartupError(f"preset file {path}: cannot be read: {e.strerror or e}") from None
    except ValueError as e:
        raise StartupError(f"preset file {path}: {e}") from None


class PresetCatalog:
    """Presets by name, each with the file it came from."""

    def __init__(self, presets: dict[str, tuple[Preset, str]]) -> None:
        self._presets = presets

    @classmethod
    def load(cls, operator: Path | None = None, shipped: Traversable | None = None
             ) -> PresetCatalog:
        """The shipped presets and those in `operator` (a folder that need not exist); one
        name in two files stops start-up."""
        folders: list[Traversable] = [shipped if shipped is not None else shipped_dir()]
        if operator is not None:
            folders.append(operator)
        presets: dict[str, tuple[Preset, str]] = {}
        for folder in folders:
            for path in _toml_files(folder):
                preset = load_file(path)
                if preset.name in presets:
                    raise StartupError(
                        f"preset {preset.name} is defined twice: in {presets[preset.name][1]} "
                        f"and in {path}; rename one or remove it")
                presets[preset.name] = (preset, str(path))
        return cls(presets)

    def get(self, name: str) -> Preset:
        try:
            return self._presets[name][0]
        except KeyError:
            raise NotFound(f"no preset named {name[:64]}") from None

    def source(self, name: str) -> str:
        """The file a preset came from (for `preset show`)."""
        self.get(name)
        return self._presets[name][1]

    def __contains__(self, name: object) -> bool:
        return name in self._presets

    def __iter__(self) -> Iterator[Preset]:
        return iter(p for p, _ in sorted(self._presets.values(), key=lambda e: e[0].name))

    def __len__(self) -> int:
        return len(self._presets)

    def listing(self) -> dict[str, Any]:
        """The body of `GET /preset`."""
        return {"presets": [p.summary() for p in self]}
