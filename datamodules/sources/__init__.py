"""Data sources: one registered ``DataSource`` class per file (``phantom``, ``csi2014``, ``verse``, ``folder``;
more through the entry-point group ``spinebench.sources``). ``base`` holds the class and the registry, ``files``
the matching of images with their annotations, ``contract`` the check every source passes."""

from spinebench.datamodules.cases import SPLITS, CaseRecord, RawCase, SourceListing
from spinebench.datamodules.sources.base import (
    DataSource,
    NoOptions,
    get_source,
    list_sources,
    load_case,
    record_fingerprint,
    register_source,
)
from spinebench.datamodules.splits import SplitOptions

__all__ = [
    "SPLITS", "CaseRecord", "RawCase", "SourceListing", "DataSource", "NoOptions", "SplitOptions", "get_source",
    "list_sources", "load_case", "record_fingerprint", "register_source",
]
