"""`fstore serve`'s settings: each option a flag and a key of fstore.yaml
(the flag wins over the file, the file over the default), wrong ones named
by their line, and API keys from a keys file, never inline."""
import pytest

from fsapp.api.auth import KeysFileError, load_api_keys_file, server_api_keys
from fsapp.cli import SERVE_OPTIONS, _BadFlag, build_parser, serve_settings
from fsapp.registry.errors import RepoError
from fsapp.registry.repo import Repo
from fsapp.registry.scaffold import FSTORE_YAML
from fsapp.api.auth import api_keys_for


def repo_with(tmp_path, text: str) -> Repo:
    (tmp_path / "fstore.yaml").write_text(text, encoding="utf-8")
    return Repo(tmp_path)


def serve_args(*flags):
    return build_parser().parse_args(["serve", *flags])


def test_starter_fstore_yaml_loads_and_names_the_serve_settings(tmp_path):
    repo = repo_with(tmp_path, FSTORE_YAML.format(project="shop"))
    assert repo.project == "shop" and repo.config["online"]["port"] == 9094
    assert serve_settings(serve_args(), repo)["port"] == 9094


def test_serve_takes_its_settings_from_fstore_yaml_and_a_flag_wins(tmp_path):
    """Issue 14, repro 6: `online: port: 9099` was ignored (serve bound 9094)."""
    repo = repo_with(tmp_path, "project: p\nonline:\n  port: 9099\n  host: 0.0.0.0\n  workers: 3\n"
                               "  fsync: interval\n  max_keys: 500\n  capacity: 64\n  checkpoint_seconds: 5\n"
                               "  grpc_port: 0\n  grpc_workers: 4\n  max_memory: 2GB\n  checkpoint_replay_seconds: 0.5\n")
    assert serve_settings(serve_args(), repo) == {
        "host": "0.0.0.0", "port": 9099, "workers": 3, "fsync": "interval", "capacity": 64, "max_keys": 500,
        "checkpoint_seconds": 5, "checkpoint_replay_seconds": 0.5, "api_keys_file": None, "grpc_port": 0,
        "grpc_workers": 4, "max_memory": "2GB", "ui": "on"}
    got = serve_settings(serve_args("--port", "9100", "--max-keys", "7", "--fsync", "always"), repo)
    assert (got["port"], got["max_keys"], got["fsync"], got["workers"]) == (9100, 7, "always", 3)
    defaults = serve_settings(serve_args(), repo_with(tmp_path, "project: p\n"))
    assert defaults == {o.flag[2:].replace("-", "_"): o.default for o in SERVE_OPTIONS}


@pytest.mark.parametrize("online, message", [
    ("  port: 99999\n", "fstore.yaml line 4: online.port must be an integer 1..65535, got 99999"),
    ("  port: '9099'\n", "fstore.yaml line 4: online.port must be an integer 1..65535, got '9099'"),
    ("  workers: 0\n", r"fstore.yaml line 4: online.workers must be an integer 1\.\.\d+ \(16 a core .*\), got 0"),
    ("  fsync: off\n", "fstore.yaml line 4: online.fsync must be one of always, interval, never, got False"),
    ("  max_keys: -1\n", "fstore.yaml line 4: online.max_keys must be an integer >= 1"),
    ("  checkpoint_seconds: 0\n", "fstore.yaml line 4: online.checkpoint_seconds must be a number > 0"),
    ("  checkpoint_replay_seconds: -1\n",
     "fstore.yaml line 4: online.checkpoint_replay_seconds must be a number > 0"),
    ("  max_memory: 2 parsecs\n", "fstore.yaml line 4: online.max_memory must be a size such as 2GB"),
    ("  max_memory: 100\n", r"fstore.yaml line 4: online.max_memory must be .*\(at least 1MB\), got 100"),
    ("  prot: 9099\n", "fstore.yaml line 4: online.prot is not a setting; the settings are host, port, "),
    ("  ui: maybe\n", "fstore.yaml line 4: online.ui must be on or off, got 'maybe'"),
])
def test_a_wrong_serve_setting_names_its_line(tmp_path, online, message):
    repo = repo_with(tmp_path, "project: p\n# serving\nonline:\n" + online)
    with pytest.raises(RepoError, match=message):
        serve_settings(serve_args(), repo)


def test_the_web_ui_is_on_unless_turned_off(tmp_path):
    assert serve_settings(serve_args(), repo_with(tmp_path, "project: p\n"))["ui"] == "on"
    assert serve_settings(serve_args(), repo_with(tmp_path, "project: p\nonline:\n  ui: off\n"))["ui"] is False
    assert serve_settings(serve_args("--ui", "off"), repo_with(tmp_path, "project: p\n"))["ui"] == "off"
    with pytest.raises(_BadFlag, match="--ui must be on or off"):
        serve_settings(serve_args("--ui", "no"), repo_with(tmp_path, "project: p\n"))


def test_a_wrong_flag_is_bad_usage(tmp_path):
    repo = repo_with(tmp_path, "project: p\n")
    with pytest.raises(_BadFlag, match=r"--port must be an integer 1..65535, got 0"):
        serve_settings(serve_args("--port", "0"), repo)
    with pytest.raises(_BadFlag, match=r"--fsync must be one of always, interval, never, got 'sometimes'"):
        serve_settings(serve_args("--fsync", "sometimes"), repo)


def test_serve_help_lists_every_option_and_its_fstore_yaml_twin(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for opt in SERVE_OPTIONS:
        assert opt.flag in out and f"fstore.yaml: {opt.key}" in out


# ---- API keys: a keys file, never inline

def test_keys_file_format(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# ingest job\n\nk-ingest  write   # the Kafka bridge\nk-model read\nk-ops read, write\n"
                    "k-root admin\n")
    assert load_api_keys_file(path) == {"k-ingest": {"write"}, "k-model": {"read"}, "k-ops": {"read", "write"},
                                        "k-root": {"admin"}}
    path.write_bytes("\ufeffk1 read\r\nk2 write\r\n".encode())  # as a Windows editor saves it
    assert load_api_keys_file(path) == {"k1": {"read"}, "k2": {"write"}}


@pytest.mark.parametrize("text, message", [
    ("k1 read\nk2\n", r"keys line 2: expected 'TOKEN SCOPE\[,SCOPE\]'"),
    ("k1 read\nk2 superuser\n", r"keys line 2: API key scopes must be among read, write, admin"),
    ("k1 read\nk1 write\n", r"keys line 2: this token is listed twice"),
    ("# nothing yet\n", r"keys: no API keys in the file"),
])
def test_a_malformed_keys_file_names_its_line(tmp_path, text, message):
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(KeysFileError, match=message):
        load_api_keys_file(path)


def test_a_missing_keys_file_is_named(tmp_path):
    with pytest.raises(KeysFileError, match=r"nope.txt: cannot read the API keys file: No such file"):
        load_api_keys_file(tmp_path / "nope.txt")


def test_keys_file_from_fstore_yaml_or_the_flag(tmp_path, monkeypatch):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "keys.txt").write_text("tok read\n")
    repo = repo_with(tmp_path, "project: p\nauth:\n  api_keys_file: secrets/keys.txt\n")
    assert repo.api_keys_file == tmp_path / "secrets" / "keys.txt"
    assert serve_settings(serve_args(), repo)["api_keys_file"] == str(tmp_path / "secrets" / "keys.txt")
    monkeypatch.chdir(tmp_path / "secrets")  # a flag's path is relative to where the command runs
    assert serve_settings(serve_args("--api-keys-file", "other.txt"), repo)["api_keys_file"] == \
        str(tmp_path / "secrets" / "other.txt")
    # the workers: the file fstore serve resolved, else the repo's
    assert api_keys_for(repo, {}) == {"tok": {"read"}}
    (tmp_path / "secrets" / "other.txt").write_text("tok2 write\n")
    assert api_keys_for(repo, {"FSTORE_API_KEYS_FILE": str(tmp_path / "secrets" / "other.txt")}) == \
        {"tok2": {"write"}}


@pytest.mark.parametrize("auth", [
    "auth:\n  api_keys:\n    s3cret: read\n",
    "auth:\n  keys: [s3cret]\n",
    "auth:\n  api_keys_file:\n    s3cret: read\n",
    "auth: s3cret\n",
])
def test_keys_written_inline_in_fstore_yaml_are_refused(tmp_path, auth):
    repo = repo_with(tmp_path, "project: p\n" + auth)
    with pytest.raises(RepoError, match=r"fstore.yaml line \d: auth.*API keys are never written in fstore.yaml"):
        serve_settings(serve_args(), repo)
    with pytest.raises(RepoError, match="never written in fstore.yaml"):
        api_keys_for(repo, {})


def test_the_older_variable_still_works_but_not_with_a_keys_file(tmp_path):
    assert server_api_keys(None, "a=read;b=read,write") == {"a": {"read"}, "b": {"read", "write"}}
    assert server_api_keys(None, "") is None
    path = tmp_path / "keys"
    path.write_text("c admin\n")
    with pytest.raises(ValueError, match="set twice: in .*keys and in the FSTORE_API_KEYS variable"):
        server_api_keys(path, "a=read")
