"""Settings: file < env < flags, every bad value named with its source, the key kept secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from archiver.config import DEFAULT_API_URL, DEFAULT_TEMPLATE, Settings, load_settings
from archiver.errors import ConfigError
from archiver.models import Secret, mask_key

KEY = "pictai_0123456789abcdefWXYZ"
OTHER_KEY = "pictai_fedcba9876543210QRST"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment whose default config path is an empty XDG dir (no user config leaks in)."""
    return {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def write_config(tmp_path: Path, text: str, mode: int = 0o600, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def load(flags: dict[str, Any], env: dict[str, str]) -> Settings:
    return load_settings(flags, env)


def config_error(flags: dict[str, Any], env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(flags, env)
    return info.value.message


def test_defaults_with_only_dest(tmp_path: Path, env: dict[str, str]) -> None:
    settings = load({"dest": str(tmp_path / "a")}, env)
    assert settings.dest == tmp_path / "a"
    assert settings.api_key is None
    assert settings.api_url == DEFAULT_API_URL
    assert settings.folder_template == DEFAULT_TEMPLATE
    assert settings.concurrency == 8
    assert settings.config_file is None
    assert settings.warnings == ()
    assert settings.state_dir == tmp_path / "a" / ".pictory-archiver"


def test_precedence_file_then_env_then_flags(tmp_path: Path, env: dict[str, str]) -> None:
    path = write_config(
        tmp_path,
        f'dest = "{tmp_path / "from-file"}"\nconcurrency = 2\nretries = 1\ntimeout = 10\n'
        f'api_key = "{KEY}"\n',
    )
    env = {**env, "PICTORY_CONCURRENCY": "3", "PICTORY_RETRIES": "7"}
    flags: dict[str, Any] = {"config_file": str(path), "concurrency": 4}

    settings = load(flags, env)
    assert settings.concurrency == 4  # flag beats env and file
    assert settings.retries == 7  # env beats file
    assert settings.timeout == 10.0  # file beats default
    assert settings.dest == tmp_path / "from-file"
    assert settings.api_key == Secret(KEY)
    assert settings.config_file == path

    assert load({"config_file": str(path)}, env).concurrency == 3
    no_env = {"XDG_CONFIG_HOME": env["XDG_CONFIG_HOME"]}
    assert load({"config_file": str(path)}, no_env).concurrency == 2


def test_flags_set_to_none_do_not_override(tmp_path: Path, env: dict[str, str]) -> None:
    env = {**env, "PICTORY_DEST": str(tmp_path / "env-dest"), "PICTORY_API_KEY": KEY}
    settings = load({"dest": None, "api_key": None, "concurrency": None}, env)
    assert settings.dest == tmp_path / "env-dest"
    assert settings.api_key == Secret(KEY)
    assert settings.concurrency == 8


def test_env_key_beats_file_key_and_flag_beats_env(tmp_path: Path, env: dict[str, str]) -> None:
    path = write_config(tmp_path, f'api_key = "{KEY}"\ndest = "{tmp_path}"\n')
    env = {**env, "PICTORY_API_KEY": OTHER_KEY}
    assert load({"config_file": str(path)}, env).api_key == Secret(OTHER_KEY)
    flagged = load({"config_file": str(path), "api_key": KEY}, env)
    assert flagged.api_key == Secret(KEY)


def test_empty_env_values_are_ignored(tmp_path: Path, env: dict[str, str]) -> None:
    env = {**env, "PICTORY_CONCURRENCY": "", "PICTORY_API_KEY": ""}
    settings = load({"dest": str(tmp_path)}, env)
    assert settings.concurrency == 8
    assert settings.api_key is None


def test_values_are_normalised(tmp_path: Path, env: dict[str, str]) -> None:
    env = {**env, "PICTORY_FULL": "yes", "PICTORY_QUIET": "off", "HOME": str(tmp_path)}
    settings = load(
        {"dest": str(tmp_path), "api_key": f"  {KEY}  ", "api_url": "http://127.0.0.1:9/x/"},
        env,
    )
    assert settings.full is True
    assert settings.quiet is False
    assert settings.api_key == Secret(KEY)
    assert settings.api_url == "http://127.0.0.1:9/x"


def test_xdg_default_config_file_is_read(tmp_path: Path, env: dict[str, str]) -> None:
    folder = Path(env["XDG_CONFIG_HOME"]) / "pictory-archiver"
    folder.mkdir(parents=True)
    path = write_config(folder, f'dest = "{tmp_path / "xdg-dest"}"\nqueue_size = 5\n', 0o600)
    path = path.rename(folder / "config.toml")
    settings = load({}, env)
    assert settings.dest == tmp_path / "xdg-dest"
    assert settings.queue_size == 5
    assert settings.config_file == path


def test_missing_explicit_config_file(tmp_path: Path, env: dict[str, str]) -> None:
    missing = tmp_path / "nope.toml"
    message = config_error({"config_file": str(missing), "dest": str(tmp_path)}, env)
    assert str(missing) in message
    assert "does not exist" in message


def test_bad_toml_names_the_file(tmp_path: Path, env: dict[str, str]) -> None:
    path = write_config(tmp_path, 'dest = "unterminated\n')
    message = config_error({"config_file": str(path)}, env)
    assert str(path) in message
    assert "not valid TOML" in message


def test_unknown_key_in_file(tmp_path: Path, env: dict[str, str]) -> None:
    path = write_config(tmp_path, f'dest = "{tmp_path}"\ncolour = "blue"\n')
    message = config_error({"config_file": str(path)}, env)
    assert str(path) in message
    assert "'colour'" in message


@pytest.mark.parametrize(
    ("key", "file_value", "env_value", "flag_value"),
    [
        ("concurrency", "0", "abc", 65),
        ("concurrency", "true", "-1", True),
        ("queue_size", "0", "many", 10_001),
        ("retries", "21", "x", -1),
        ("timeout", "0", "nan", 3601),
        ("full", '"maybe"', "perhaps", "2"),
        ("api_url", '"ftp://example.com"', "not a url", "http://"),
        ("dest", "3", None, ""),
        ("log_file", "[1, 2]", None, ""),
    ],
)
def test_bad_value_names_key_and_source(
    tmp_path: Path,
    env: dict[str, str],
    key: str,
    file_value: str,
    env_value: str | None,
    flag_value: Any,
) -> None:
    dest_line = "" if key == "dest" else f'dest = "{tmp_path}"\n'
    path = write_config(tmp_path, f"{dest_line}{key} = {file_value}\n")
    message = config_error({"config_file": str(path)}, env)
    assert f"{path}: {key}" in message

    if env_value is not None:
        env_name = "PICTORY_" + key.upper()
        message = config_error({"dest": str(tmp_path)}, {**env, env_name: env_value})
        assert message.startswith(env_name + ":")

    flag = "--" + key.replace("_", "-")
    message = config_error({"dest": str(tmp_path), key: flag_value}, env)
    assert message.startswith(flag + ":")


@pytest.mark.parametrize(
    "template",
    [
        "../{id}",
        "{year}/../../{id}",
        "/abs/{id}",
        "{year}/./{id}",
        "{year}//{id}",
        "{id}/",
        "{nope}/{id}",
        "{id",
        "{0}/{id}",
        "{year}/{month}/{date}",
        "",
    ],
)
def test_bad_folder_template(tmp_path: Path, env: dict[str, str], template: str) -> None:
    message = config_error({"dest": str(tmp_path), "folder_template": template}, env)
    assert message.startswith("--folder-template:")


def test_template_error_lists_the_known_fields(tmp_path: Path, env: dict[str, str]) -> None:
    message = config_error({"dest": str(tmp_path), "folder_template": "{nope}/{id}"}, env)
    assert "{id}" in message and "{year}" in message


def test_good_templates_are_kept(tmp_path: Path, env: dict[str, str]) -> None:
    for template in ("{id}", "{kind}/{year}-{month}-{day}/{time}_{id}", "by-id/{id}"):
        settings = load({"dest": str(tmp_path), "folder_template": template}, env)
        assert settings.folder_template == template


def test_escaped_id_placeholder_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    config_error({"dest": str(tmp_path), "folder_template": "{year}/{{id}}"}, env)


@pytest.mark.parametrize("line", ["concurrency = 2.7", "timeout = true"])
def test_wrongly_typed_toml_numbers_are_refused(
    tmp_path: Path, env: dict[str, str], line: str
) -> None:
    path = write_config(tmp_path, f'dest = "{tmp_path}"\n{line}\n')
    config_error({"config_file": str(path)}, env)


@pytest.mark.parametrize(
    "bad_key",
    [
        "sk_live_abcdefghijkl",
        "pictai_has space inside",
        "PICTAI_upper0000",
        "pictaiQ9Q9Q9Q9",
        12345,
    ],
)
def test_bad_key_is_refused_without_echoing_it(
    tmp_path: Path, env: dict[str, str], bad_key: Any
) -> None:
    message = config_error({"dest": str(tmp_path), "api_key": bad_key}, env)
    assert message.startswith("--api-key:")
    assert str(bad_key) not in message

    if isinstance(bad_key, str):
        message = config_error({"dest": str(tmp_path)}, {**env, "PICTORY_API_KEY": bad_key})
        assert message.startswith("PICTORY_API_KEY:")
        assert bad_key not in message


def test_dest_that_is_a_file(tmp_path: Path, env: dict[str, str]) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    message = config_error({"dest": str(target)}, env)
    assert str(target) in message
    assert "not a directory" in message


def test_dest_is_required(env: dict[str, str]) -> None:
    assert "--dest" in config_error({}, env)


def test_dest_may_not_exist_yet(tmp_path: Path, env: dict[str, str]) -> None:
    assert load({"dest": str(tmp_path / "new" / "dir")}, env).dest == tmp_path / "new" / "dir"


def test_require_key(tmp_path: Path, env: dict[str, str]) -> None:
    settings = load({"dest": str(tmp_path)}, env)
    with pytest.raises(ConfigError, match="PICTORY_API_KEY"):
        settings.require_key()
    keyed = load({"dest": str(tmp_path), "api_key": KEY}, env)
    assert keyed.require_key().value == KEY


def test_secret_never_shows_the_key(tmp_path: Path, env: dict[str, str]) -> None:
    secret = Secret(KEY)
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", str([secret])):
        assert KEY not in text
        assert "WXYZ" in text
        assert "0123456789" not in text
    settings = load({"dest": str(tmp_path), "api_key": KEY}, env)
    assert KEY not in repr(settings)
    assert mask_key(KEY) == "pictai_…WXYZ"
    assert mask_key("pictai_abc") == "pictai_…"


def test_world_readable_config_with_key_warns(tmp_path: Path, env: dict[str, str]) -> None:
    path = write_config(tmp_path, f'dest = "{tmp_path}"\napi_key = "{KEY}"\n', mode=0o644)
    settings = load({"config_file": str(path)}, env)
    assert len(settings.warnings) == 1
    assert str(path) in settings.warnings[0]
    assert "chmod 600" in settings.warnings[0]
    assert KEY not in settings.warnings[0]


def test_private_config_with_key_does_not_warn(tmp_path: Path, env: dict[str, str]) -> None:
    path = write_config(tmp_path, f'dest = "{tmp_path}"\napi_key = "{KEY}"\n', mode=0o600)
    assert load({"config_file": str(path)}, env).warnings == ()


def test_world_readable_config_without_key_does_not_warn(
    tmp_path: Path, env: dict[str, str]
) -> None:
    path = write_config(tmp_path, f'dest = "{tmp_path}"\n', mode=0o644)
    assert load({"config_file": str(path), "api_key": KEY}, env).warnings == ()
