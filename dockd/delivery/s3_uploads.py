"""The S3 target's upload journal: moved to :mod:`dockd.store.uploads` (the store owns
every SQL statement); these names stay importable from here for the S3 target."""

from __future__ import annotations

from ..store.uploads import JournalPart as JournalPart
from ..store.uploads import PendingUpload as PendingUpload
from ..store.uploads import UploadJournal as UploadJournal
