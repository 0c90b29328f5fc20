"""fstore.yaml: full YAML through PyYAML's safe loader, with every mistake
named by its line, and the sections the engine and the workers read (kafka,
feature_logging) naming the line of a wrong setting."""
import pytest

from fsapp.engine.kafka_config import KafkaConfig
from fsapp.registry.errors import RepoError
from fsapp.registry.repo import Repo, load_config
from fsapp.serve.feature_log import FeatureLogConfig


def repo_with(tmp_path, text: str) -> Repo:
    (tmp_path / "fstore.yaml").write_text(text, encoding="utf-8")
    return Repo(tmp_path)


# ---- the YAML

def test_double_quoted_text_keeps_its_unicode():
    """Issue 14, repro 6: the old YAML subset sent double-quoted strings
    through unicode_escape, turning "café" into 'cafÃ©'."""
    cfg = load_config('project: "café"\nnote: "tab\\there \\u00e9"\nsingle: \'l\'\'été\'\n')
    assert cfg == {"project": "café", "note": "tab\there é", "single": "l'été"}


def test_full_yaml_anchors_merges_and_block_strings():
    cfg = load_config("project: p\n"
                      "defaults: &defaults\n  port: 9099\n  workers: 4\n"
                      "online:\n  <<: *defaults\n  workers: 3\n"
                      "description: |\n  two\n  lines\n"
                      "folded: >-\n  one\n  line\n"
                      "tags: [a, 2]\nflag: yes\n")
    assert cfg["online"] == {"port": 9099, "workers": 3}
    assert cfg["description"] == "two\nlines\n" and cfg["folded"] == "one line"
    assert cfg["tags"] == ["a", 2] and cfg["flag"] is True
    # the line of each key, a merged one where it was written
    assert cfg["online"].lines == {"port": 3, "workers": 7} and cfg.lines["online"] == 5


@pytest.mark.parametrize("text, message", [
    ("a: 1\n   b: 2\n", "fstore.yaml line 2: mapping values are not allowed here"),
    ("project: p\nonline:\n  port: 1\n  port: 2\n", "fstore.yaml line 4: 'port' is set twice"),
    ("project: p\nproject: q\n", "fstore.yaml line 2: 'project' is set twice"),
    ("project: p\nonline:\n\tport: 1\n", "fstore.yaml line 3: .*indent with spaces, not tabs"),
    ("project: p\non: 1\n", "fstore.yaml line 2: the key 'on' reads as bool True, not as a name: quote it"),
    ("- a\n- b\n", "fstore.yaml line 1: expected settings as 'key: value' lines"),
    ("project: p\ntags: [a, b\n", "fstore.yaml line 3: .*expected ',' or ']'"),
    ("project: p\n---\nproject: q\n", "fstore.yaml line 2: expected a single document"),
    ("project: p\nx: \x07\n", "fstore.yaml line 2: character #x0007 is not allowed"),
])
def test_yaml_mistakes_name_their_line(text, message):
    with pytest.raises(RepoError, match=message):
        load_config(text, "fstore.yaml")


def test_repo_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(RepoError, match=r"fstore.yaml line 2: set 'project: <name>'"):
        repo_with(tmp_path, "registry: r.db\nproject: [a]\n")
    with pytest.raises(RepoError, match=r"fstore.yaml line 1: mapping values"):
        repo_with(tmp_path, "project: p: q\n")
    (tmp_path / "fstore.yaml").write_bytes(b"project: caf\xe9\n")
    with pytest.raises(RepoError, match="not UTF-8"):
        Repo(tmp_path)
    assert repo_with(tmp_path, "# only comments\nproject: p\n").config["data_dir"] == "data"


def test_kafka_and_feature_logging_errors_name_the_line(tmp_path):
    repo = repo_with(tmp_path, "project: p\nkafka:\n  bootstrap_servers: x:1\n  batchsize: 3\n")
    with pytest.raises(RepoError, match=r"fstore.yaml line 4: kafka: unknown setting 'batchsize'"):
        KafkaConfig.from_repo(repo)
    repo = repo_with(tmp_path, "project: p\nkafka:\n  bootstrap_servers: x:1\n  properties:\n"
                               "    enable.auto.commit: true\n")
    with pytest.raises(RepoError, match=r"fstore.yaml line 5: kafka: enable.auto.commit is set by fstore"):
        KafkaConfig.from_repo(repo)
    repo = repo_with(tmp_path, "project: p\nfeature_logging:\n  path: x\n  topic: t\n  services: s\n")
    with pytest.raises(RepoError, match=r"fstore.yaml line 4: feature_logging: topic needs"):
        FeatureLogConfig.from_repo(repo)


def test_consumer_properties_stay_out_of_the_dead_letter_producer_and_producer_ones_out_of_the_consumer(capfd):
    """`kafka.properties` go to the consumer and the dead-letter producer; a
    consumer-only one (the fetch settings docs/kafka.md recommends) made
    librdkafka print a CONFWARN line for the producer at every start, and a
    producer-only one for the consumer. Each client now gets its own side's
    and the shared ones."""
    from confluent_kafka import Consumer

    from fsapp.engine.kafka_config import DeadLetterTopic

    cfg = KafkaConfig(bootstrap_servers="127.0.0.1:9", group_id="g",
                      properties={"queued.min.messages": "1000000", "fetch.wait.max.ms": "10",
                                  "linger.ms": "20", "socket.timeout.ms": "30000"})
    assert set(cfg.producer_properties()) == {"bootstrap.servers", "linger.ms", "socket.timeout.ms"}
    assert set(cfg.consumer_properties()) == {"bootstrap.servers", "queued.min.messages", "fetch.wait.max.ms",
                                              "socket.timeout.ms"}
    capfd.readouterr()
    DeadLetterTopic(cfg).producer.flush(0)
    Consumer({**cfg.consumer_properties(), "group.id": "g"}).close()
    err = capfd.readouterr().err
    assert "CONFWARN" not in err, err


def test_a_section_fstore_does_not_read_is_refused_not_ignored(tmp_path):
    """'kafak:' (or 'onlin:') was ignored whole: a server that never consumed its topics and said
    nothing; a kafka section without bootstrap_servers was read as push-only just as quietly; a
    data_dir that cannot be created raised a traceback from `fstore serve`."""
    from fsapp.repo_lock import RepoLock
    with pytest.raises(RepoError, match=r"fstore.yaml line 2: 'kafak' is not an fstore.yaml setting; did you mean "
                                        r"'kafka'\?"):
        repo_with(tmp_path, "project: p\nkafak:\n  bootstrap_servers: x:1\n")
    with pytest.raises(RepoError, match="'onlin' is not an fstore.yaml setting; did you mean 'online'"):
        repo_with(tmp_path, "project: p\nonlin:\n  fsync: always\n")
    repo = repo_with(tmp_path, "project: p\nx-defaults: &d\n  fsync: never\nonline:\n  <<: *d\n")
    assert repo.config["online"] == {"fsync": "never"}
    for section, hint in (("  bootstrap_servers: ''\n", ""),
                          ("  bootstrap.servers: x:1\n", r" \(fstore's spelling of librdkafka's bootstrap.servers\)"),
                          ("  group_id: g\n", "")):
        repo = repo_with(tmp_path, "project: p\nkafka:\n" + section)
        with pytest.raises(RepoError, match=f"kafka.bootstrap_servers is not set{hint}: give the brokers"):
            KafkaConfig.from_repo(repo)
    assert KafkaConfig.from_repo(repo_with(tmp_path, "project: p\nkafka:\n")) is None  # an empty section: push-only
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(RepoError, match=f"the data directory {blocker}/data cannot be used: Not a directory"):
        RepoLock(blocker / "data", "serve").acquire()


def test_settings_of_the_wrong_shape_say_so(tmp_path):
    """feature_logging.services: 5 raised TypeError from `fstore serve`; a YAML list of brokers was
    sent to librdkafka as "['a:1', 'b:2']"; mlflow.tracking_uri: 5 was taken as the URI."""
    from fsapp.integrations import IntegrationError
    from fsapp.integrations.tracking import tracking_uri_for
    repo = repo_with(tmp_path, "project: p\nfeature_logging:\n  services: 5\n")
    with pytest.raises(RepoError, match=r"line 3: feature_logging: services is a feature service name, a "
                                        r"comma-separated list or a YAML list of names, got 5"):
        FeatureLogConfig.from_repo(repo)
    assert FeatureLogConfig.from_repo(repo_with(tmp_path, "project: p\nfeature_logging:\n  services: [a, b]\n"))\
        .services == {"a", "b"}
    repo = repo_with(tmp_path, "project: p\nkafka:\n  bootstrap_servers: [a:1, b:2]\n")
    assert KafkaConfig.from_repo(repo).bootstrap_servers == "a:1,b:2"
    repo = repo_with(tmp_path, "project: p\nkafka:\n  bootstrap_servers: 9092\n")
    with pytest.raises(RepoError, match="kafka.bootstrap_servers: give the brokers as host:port"):
        KafkaConfig.from_repo(repo)
    repo = repo_with(tmp_path, "project: p\nmlflow:\n  tracking_uri: 5\n")
    with pytest.raises(IntegrationError, match="line 3: mlflow.tracking_uri is a URI"):
        tracking_uri_for(repo, use_env=False)
