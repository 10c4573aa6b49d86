"""Preference-data construction: prompts, recipes, judging, the dataset format (shards + manifest), the importer.

Import the submodules directly (`livo.data.dataset`, `livo.data.generate`, ...); this package imports nothing heavy.
"""

from livo.data.dataset import (
    PreferenceDataset,
    load_preference_dataset,
    verify_dataset,
    write_rows_dataset,
)

__all__ = ["PreferenceDataset", "load_preference_dataset", "verify_dataset", "write_rows_dataset"]
