"""Local paths and `s3://` URIs behind one small interface: download, upload, exists, list_files.

S3 goes through boto3 (the `track` extra, imported on first use, never at `import kubedistill.storage`).
The endpoint of an S3-compatible store (MinIO, SeaweedFS, Ceph) comes from `AWS_ENDPOINT_URL_S3` or
`AWS_ENDPOINT_URL`; credentials from the usual AWS chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
`AWS_PROFILE`, a pod's web identity, ...).

What a transfer guarantees:
- Local files are written atomically (a reader sees the old file or the complete new one).
- Every object that arrives is checked: its size always; its content against the `sha256` metadata this
  module writes on upload, else against the ETag when the store gives a plain MD5 one.
- Transient failures (throttling, 5xx, dropped connections) are retried by botocore (`standard` retry
  mode with backoff), then the whole file transfer is retried with exponential backoff; a mismatch is
  retried the same way. What still fails raises `StorageError` (one line: cause and fix).
- Large files go in concurrent multipart transfers (boto3 `TransferConfig`); folders in parallel.
- A prefix downloaded again into the same folder reuses the files whose ETag and size are unchanged
  (recorded in `.kubedistill-fetch.json` there); files that vanished from the prefix are removed.
- User errors (no credentials, refused credentials, access denied, no such bucket or key, an endpoint
  that cannot be reached or parsed) raise `UserError` naming the URI and what to do.

Tuning, all optional environment variables: KUBEDISTILL_S3_MULTIPART_MB (8: files from this size go in
parts), KUBEDISTILL_S3_CHUNK_MB (8: part size), KUBEDISTILL_S3_CONCURRENCY (8: parallel parts and files),
KUBEDISTILL_S3_MAX_ATTEMPTS (5: botocore attempts per request), KUBEDISTILL_S3_RETRY_MODE (standard or
adaptive), KUBEDISTILL_S3_TRANSFER_RETRIES (3: attempts per file transfer), KUBEDISTILL_S3_BACKOFF_S (1.0:
first pause between those). Caches live under `kubedistill.core.cache.cache_dir`.

Modules: `uris`, `s3` (settings, client, errors, retries), `objects`, `sync` (prefixes), `transfer` (the interface,
re-exported here), `locks`.
"""

from kubedistill.storage.locks import file_lock
from kubedistill.storage.objects import SHA256_META, ObjectInfo, file_hashes
from kubedistill.storage.s3 import LOGGER, Settings, StorageError, endpoint_url, s3_client
from kubedistill.storage.sync import MANIFEST
from kubedistill.storage.transfer import download, download_cached, exists, head, list_files, upload
from kubedistill.storage.uris import is_remote, join_uri, split_s3

__all__ = [
    "LOGGER",
    "MANIFEST",
    "ObjectInfo",
    "SHA256_META",
    "Settings",
    "StorageError",
    "download",
    "download_cached",
    "endpoint_url",
    "exists",
    "file_hashes",
    "file_lock",
    "head",
    "is_remote",
    "join_uri",
    "list_files",
    "s3_client",
    "split_s3",
    "upload",
]
