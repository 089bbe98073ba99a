"""Storage and dataset fetching against a real S3 store (SeaweedFS on loopback)."""

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from kubedistill import storage
from kubedistill.core.errors import DataError, UserError
from kubedistill.data.dataset_yaml import load_data_yaml
from kubedistill.data.fetch import fetch_dataset
from kubedistill.storage import s3 as storage_s3

BUCKET = "kd-storage"


@pytest.fixture
def s3(s3_env, monkeypatch, tmp_path):
    """The loopback store in the environment, a fresh client, fast whole-transfer retries, a private cache."""
    s3_env.bucket(BUCKET)
    monkeypatch.setenv("KUBEDISTILL_S3_BACKOFF_S", "0.01")
    monkeypatch.setenv("KUBEDISTILL_CACHE", str(tmp_path / "cache"))
    storage_s3._client.cache_clear()
    yield s3_env
    storage_s3._client.cache_clear()


def _uri(request, *parts: str) -> str:
    """A key prefix of its own for each test (the store is shared by the session)."""
    return "/".join([f"s3://{BUCKET}", request.node.name.replace("[", "_").replace("]", ""), *parts])


def test_file_round_trip(s3, request, tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(3000))
    uri = storage.upload(src, _uri(request, "dir/a.bin"))
    assert uri == _uri(request, "dir/a.bin") and storage.exists(uri)
    head = s3.client().head_object(Bucket=BUCKET, Key=uri.split("/", 3)[3])
    assert head["Metadata"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    # into a "folder" URI the file keeps its name; download into an existing folder does the same
    assert storage.upload(src, _uri(request, "dir2/")) == _uri(request, "dir2/a.bin")
    (tmp_path / "down").mkdir()
    got = storage.download(uri, tmp_path / "down")
    assert got == tmp_path / "down" / "a.bin" and got.read_bytes() == src.read_bytes()
    assert storage.download(uri, tmp_path / "x" / "b.bin").read_bytes() == src.read_bytes()
    info = storage.head(uri)
    assert info.size == 3000 and info.etag == hashlib.md5(src.read_bytes()).hexdigest()
    assert not storage.exists(_uri(request, "dir/nope.bin")) and not storage.exists("s3://kd-no-such-bucket/x")
    assert storage.exists(_uri(request, "dir")) and storage.exists(_uri(request, "dir/"))  # a "folder"
    with pytest.raises(UserError, match="does not exist"):
        storage.download(_uri(request, "dir/nope.bin"), tmp_path / "n.bin")
    with pytest.raises(UserError, match="Bucket 'kd-no-such-bucket' does not exist"):
        storage.download("s3://kd-no-such-bucket/k", tmp_path / "n.bin")
    assert not (tmp_path / "n.bin").exists()


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != storage.MANIFEST
    }


def test_folder_round_trip_and_reuse(s3, request, tmp_path):
    src = tmp_path / "src"
    for rel in ("a.txt", "sub/b.txt", "sub/deeper/c.bin"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rel.encode() * 50)
    prefix = storage.upload(src, _uri(request, "tree"))
    assert prefix == _uri(request, "tree/")
    assert sorted(f.rel for f in storage.list_files(prefix)) == ["a.txt", "sub/b.txt", "sub/deeper/c.bin"]
    dest = tmp_path / "dest"
    assert storage.download(prefix, dest) == dest and _tree(dest) == _tree(src)
    # a key without the trailing "/" that is a folder downloads as a folder too
    assert _tree(storage.download(_uri(request, "tree"), tmp_path / "dest2")) == _tree(src)

    # again, after one object changed and one vanished: the unchanged file is reused, the others follow the store
    kept = (dest / "sub/deeper/c.bin").stat()
    client = s3.client()
    key = prefix.split("/", 3)[3]
    client.put_object(Bucket=BUCKET, Key=key + "a.txt", Body=b"changed")
    client.delete_object(Bucket=BUCKET, Key=key + "sub/b.txt")
    storage.download(prefix, dest)
    assert (dest / "a.txt").read_bytes() == b"changed" and not (dest / "sub/b.txt").exists()
    now = (dest / "sub/deeper/c.bin").stat()
    assert (now.st_ino, now.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
    # a local edit is not mistaken for the stored file
    (dest / "sub/deeper/c.bin").write_bytes(b"local edit")
    storage.download(prefix, dest)
    assert (dest / "sub/deeper/c.bin").read_bytes() == (src / "sub/deeper/c.bin").read_bytes()


def test_multipart_round_trip(s3, request, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBEDISTILL_S3_MULTIPART_MB", "5")
    monkeypatch.setenv("KUBEDISTILL_S3_CHUNK_MB", "5")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * 1024 * 1024))  # > 8 MB: two 5 MiB parts
    uri = storage.upload(big, _uri(request, "big.bin"))
    assert storage.head(uri).etag.endswith("-2")  # the store saw a 2-part multipart upload
    got = storage.download(uri, tmp_path / "back.bin")  # a concurrent ranged download, checked against sha256
    assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(big.read_bytes()).digest()


def test_damaged_object_detected(s3, request, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBEDISTILL_S3_TRANSFER_RETRIES", "2")
    key = _uri(request, "bad.bin").split("/", 3)[3]
    # an object whose recorded sha256 does not match its bytes (as if damaged at rest)
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=b"payload", Metadata={"sha256": "0" * 64})
    with pytest.raises(storage.StorageError, match=r"arrived damaged \(sha256 .* after 2 attempts"):
        storage.download(f"s3://{BUCKET}/{key}", tmp_path / "bad.bin")
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
    with pytest.raises(storage.StorageError, match="arrived damaged"):
        storage.download(f"s3://{BUCKET}/{key.rsplit('/', 1)[0]}/", tmp_path / "folder")
    assert not (tmp_path / "folder" / "bad.bin").exists()


def test_fetch_dataset_from_prefix(s3, request, tiny_data, tmp_path):
    prefix = storage.upload(tiny_data.parent, _uri(request, "tiny"))
    dest = tmp_path / "ds"
    yml = fetch_dataset(prefix, dest)
    spec = load_data_yaml(yml)
    assert yml == dest / "data.yaml" and (len(spec.splits["train"]), len(spec.splits["val"])) == (16, 8)
    # the same URI without "/" and as the yaml object itself; the second fetch reuses every file
    first = spec.splits["train"][0].stat()
    assert fetch_dataset(prefix.rstrip("/"), dest) == yml and fetch_dataset(prefix + "data.yaml", dest) == yml
    assert spec.splits["train"][0].stat().st_mtime_ns == first.st_mtime_ns


def test_fetch_dataset_prefix_without_yaml(s3, request, tiny_data, tmp_path):
    prefix = storage.upload(tiny_data.parent / "images", _uri(request, "noyaml/images"))
    with pytest.raises(DataError, match="holds images/labels but no data.yaml"):
        fetch_dataset(prefix.rsplit("images/", 1)[0], tmp_path / "ds")
    with pytest.raises(UserError, match="does not exist"):
        fetch_dataset(_uri(request, "nothing-here/"), tmp_path / "ds2")


def _archive(src: Path, out: Path) -> Path:
    if out.name.endswith(".zip"):
        with zipfile.ZipFile(out, "w") as zf:
            for f in sorted(src.rglob("*")):
                if f.is_file():
                    zf.write(f, "tiny/" + f.relative_to(src).as_posix())
    else:
        with tarfile.open(out, "w:gz") as tf:
            tf.add(src, arcname=".")
    return out


@pytest.mark.parametrize("name", ["tiny.zip", "tiny.tar.gz"])
def test_fetch_dataset_archive_from_s3(s3, request, tiny_data, tmp_path, name):
    arc = _archive(tiny_data.parent, tmp_path / name)
    uri = storage.upload(arc, _uri(request, name))
    dest = tmp_path / "ds"
    yml = fetch_dataset(uri, dest)
    spec = load_data_yaml(yml)
    assert (len(spec.splits["train"]), len(spec.splits["val"])) == (16, 8) and dest in yml.parents
    assert not any(p.name.endswith((".zip", ".gz")) for p in dest.rglob("*"))  # the archive itself is not kept
    ino = spec.splits["val"][0].stat().st_ino
    assert fetch_dataset(uri, dest) == yml and spec.splits["val"][0].stat().st_ino == ino  # same ETag: reused
    (tiny_data.parent / "NOTES.txt").write_text("v2")  # a new version of the archive under the same URI
    try:
        storage.upload(_archive(tiny_data.parent, tmp_path / ("v2-" + name)), uri)
    finally:
        (tiny_data.parent / "NOTES.txt").unlink()
    assert fetch_dataset(uri, dest) == yml and spec.splits["val"][0].stat().st_ino != ino
    assert (yml.parent / "NOTES.txt").read_text() == "v2"


def test_fetch_unsafe_archive_from_s3(s3, request, tmp_path):
    arc = tmp_path / "evil.tar"
    with tarfile.open(arc, "w") as tf:
        t = tarfile.TarInfo("../../escape.txt")
        t.size = 4
        tf.addfile(t, io.BytesIO(b"evil"))
    uri = storage.upload(arc, _uri(request, "evil.tar"))
    with pytest.raises(DataError, match="path traversal"):
        fetch_dataset(uri, tmp_path / "w" / "ds")
    assert not list(tmp_path.rglob("escape.txt"))


def _cli(args, capfd):
    from kubedistill.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capfd.readouterr()
    return e.value.code, out, err


def test_cli_fetch_and_check(s3, request, tiny_data, tmp_path, capfd):
    prefix = storage.upload(tiny_data.parent, _uri(request, "tiny"))
    from kubedistill.cli import main

    main(["data", "fetch", prefix, str(tmp_path / "ds")])
    assert capfd.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "ds" / "data.yaml")
    main(["data", "check", prefix])  # fetched into $KUBEDISTILL_CACHE/datasets first
    out = capfd.readouterr().out
    assert "train" in out and list((tmp_path / "cache" / "datasets").glob("tiny-*/data.yaml"))


def test_cli_credential_and_endpoint_errors(s3, request, tmp_path, capfd, monkeypatch):
    uri = _uri(request, "x/")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    code, _, err = _cli(["data", "fetch", uri, str(tmp_path / "a")], capfd)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: The S3 store at http://127.0.0.1") and "refused the credentials" in err and uri in err
    assert "Check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in err

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)
    code, _, err = _cli(["data", "fetch", "s3://kd-no-such-bucket/ds/", str(tmp_path / "b")], capfd)
    assert code == 2 and "Bucket 'kd-no-such-bucket' does not exist" in err and len(err.strip().splitlines()) == 1

    from tests.servers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("KUBEDISTILL_S3_MAX_ATTEMPTS", "1")
    code, _, err = _cli(["data", "check", uri], capfd)
    assert code == 2 and "Cannot reach the S3 endpoint" in err and "Check AWS_ENDPOINT_URL" in err
    assert len(err.strip().splitlines()) == 1

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://bad host:9000")
    code, _, err = _cli(["data", "fetch", uri, str(tmp_path / "c")], capfd)
    assert code == 2 and "not a valid URL" in err and len(err.strip().splitlines()) == 1


def test_cli_no_credentials_subprocess(s3, request, tmp_path):
    """The installed command, with no credentials anywhere: one line on stderr, exit 2, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=s3.endpoint,
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_DEFAULT_REGION="us-east-1",
    )
    r = subprocess.run(
        [sys.executable, "-m", "kubedistill", "data", "fetch", _uri(request, "ds/"), str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: No S3 credentials to access '{_uri(request, 'ds/')}'. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)."
    ]
