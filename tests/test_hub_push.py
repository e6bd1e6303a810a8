"""push_to_hub / from_pretrained(repo_id) against a local HTTP server on 127.0.0.1 that plays the Hub.

The server implements the few endpoints ``huggingface_hub`` calls (create repo, validate YAML, preupload,
commit, repo info, tree listing, file resolve) and records every request, so the test checks what the client
really sent: one commit with every file and its exact bytes.
"""

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest
from safetensors.torch import load as safetensors_load
import torch
from huggingface_hub import ModelCard
from transformers import BertConfig, BertForQuestionAnswering, BertForPreTraining

from hf_sparse import SparsityConfig, get_sparsity_config, sparse_modules, sparsify_
from hf_sparse import checkpoint as ckpt
from hf_sparse.checkpoint import push_to_hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub(BaseHTTPRequestHandler):
    repos = {}  # repo_id -> {path: bytes}
    log = []  # (method, path, headers, body)

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status, payload=None, body=None, headers=()):
        data = body if body is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if body is None else "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_POST(self):
        path, body = urlsplit(self.path).path, self._body()
        self.log.append(("POST", path, dict(self.headers), body))
        if path == "/api/repos/create":
            req = json.loads(body)
            repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            self.repos.setdefault(repo, {})
            return self._send(200, {"url": f"http://{self.headers['Host']}/{repo}", "name": repo})
        if path == "/api/validate-yaml":
            return self._send(200, {"errors": [], "warnings": []})
        parts = path.split("/")  # ['', 'api', 'models', ns, name, action, revision]
        repo = "/".join(parts[3:5])
        if parts[5] == "preupload":
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in json.loads(body)["files"]]
            return self._send(200, {"files": files})
        if parts[5] == "commit":
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            for item in lines[1:]:
                assert item["key"] == "file" and item["value"]["encoding"] == "base64"
                self.repos[repo][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return self._send(200, {"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{COMMIT}",
                                    "commitOid": COMMIT, "pullRequestUrl": None})
        return self._send(404, {"error": f"unknown endpoint {path}"})

    def do_GET(self):
        path = unquote(urlsplit(self.path).path)
        self.log.append((self.command, path, dict(self.headers), b""))
        parts = path.split("/")
        if path.startswith("/api/models/") and parts[5] == "revision":
            repo = "/".join(parts[3:5])
            siblings = [{"rfilename": f} for f in sorted(self.repos[repo])]
            return self._send(200, {"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings, "private": False})
        if path.startswith("/api/models/") and parts[5] == "tree":
            repo = "/".join(parts[3:5])
            entries = [{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                       for f, b in sorted(self.repos[repo].items())]
            return self._send(200, entries)
        if len(parts) >= 5 and parts[3] == "resolve":  # /{ns}/{name}/resolve/{rev}/{file}
            repo, filename = "/".join(parts[1:3]), "/".join(parts[5:])
            data = self.repos.get(repo, {}).get(filename)
            if data is None:
                return self._send(404, {"error": "entry not found"}, headers=[("X-Error-Code", "EntryNotFound")])
            etag = '"' + hashlib.sha1(data).hexdigest() + '"'
            return self._send(200, body=data, headers=[("X-Repo-Commit", COMMIT), ("ETag", etag)])
        return self._send(404, {"error": f"unknown endpoint {path}"})

    do_HEAD = do_GET


@pytest.fixture
def hub(monkeypatch, tmp_path):
    FakeHub.repos, FakeHub.log = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    import huggingface_hub.constants as hf_constants

    # huggingface_hub reads HF_ENDPOINT once, into constants.ENDPOINT and the resolve-URL template.
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True, raising=False)
    yield FakeHub
    server.shutdown()
    server.server_close()


def tiny_sparse_bert():
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=64, max_position_embeddings=32))
    return sparsify_(model, SparsityConfig(sparsity=0.9, seed=0, init="truncated_normal"))


def test_push_is_one_commit_with_every_file(hub, tmp_path):
    model = tiny_sparse_bert()
    info = push_to_hub(model, "org/bert-tiny-s90", token="hf_fake_token",
                       training_stats={"step": 3, "dof": 0.125}, card_info={"datasets": ["wikimedia/wikipedia"]})
    assert info.oid == COMMIT
    commits = [entry for entry in hub.log if entry[1].endswith("/commit/main")]
    assert len(commits) == 1 and commits[0][1] == "/api/models/org/bert-tiny-s90/commit/main"
    assert commits[0][2].get("authorization") == "Bearer hf_fake_token"
    created = [json.loads(e[3]) for e in hub.log if e[1] == "/api/repos/create"]
    assert created and created[0]["name"] == "bert-tiny-s90" and created[0]["organization"] == "org"
    files = hub.repos["org/bert-tiny-s90"]
    assert {"config.json", "model.safetensors", "sparsity_config.json", "sparsity_masks.safetensors",
            "README.md"} <= set(files)
    # the bytes that arrived are a valid checkpoint: compare with a local save of the same model
    local = ckpt.save_pretrained(model, tmp_path / "local")
    for name in ("model.safetensors", "sparsity_masks.safetensors"):
        sent, ref = safetensors_load(files[name]), safetensors_load((local / name).read_bytes())
        assert sorted(sent) == sorted(ref) and all(torch.equal(sent[k], ref[k]) for k in ref)
    record = json.loads(files["sparsity_config.json"])
    assert record["card"]["repo_id"] == "org/bert-tiny-s90" and record["training_stats"]["dof"] == 0.125
    card = ModelCard(files["README.md"].decode())
    assert card.data.datasets == ["wikimedia/wikipedia"] and "sparse" in card.data.tags
    assert 'from_pretrained(BertForPreTraining, "org/bert-tiny-s90")' in card.text


def test_from_pretrained_downloads_repo_id(hub):
    model = tiny_sparse_bert()
    push_to_hub(model, "org/bert-tiny-s90", token="hf_fake_token")
    qa = ckpt.from_pretrained(BertForQuestionAnswering, "org/bert-tiny-s90", token="hf_fake_token")
    assert any(e[1].startswith("/org/bert-tiny-s90/resolve/") for e in hub.log)  # really downloaded
    for name, m in sparse_modules(model).items():
        assert torch.equal(sparse_modules(qa)[name].weight_mask, m.weight_mask)
    assert get_sparsity_config(qa) == get_sparsity_config(model)


def test_non_main_process_does_not_push(hub):
    assert push_to_hub(tiny_sparse_bert(), "org/x", is_main_process=False) is None
    assert hub.log == []


def test_bad_repo_id_rejected_before_any_request(hub):
    with pytest.raises(ValueError, match="a/b/c"):
        push_to_hub(tiny_sparse_bert(), "a/b/c")
    assert hub.log == []
