"""Programmatic Alembic: ``redgrid db upgrade`` and the migrations-match-models test use this."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def pending_diff(engine: Engine) -> list[Any]:
    """What autogenerate would still emit after upgrading: empty when models == migrations."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, SQLModel.metadata))


def regenerate_initial() -> None:
    """Development aid while RedGrid has no deployed schema: rewrite 0001 from the models.

    Run ``python -m models.migrate`` after changing models/tables.py.
    """
    import tempfile

    from alembic import command

    from models.db import make_engine
    from models.settings import load_settings

    versions = MIGRATIONS / "versions"
    for old in versions.glob("0001_*.py"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(load_settings(database_url=f"sqlite:///{tmp}/gen.db"))
        cfg = alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.revision(cfg, message="initial schema", autogenerate=True, rev_id="0001")
        engine.dispose()
    for new in versions.glob("0001_*.py"):
        src = new.read_text().replace("from alembic import op\nimport sqlmodel\n", "from alembic import op\n")
        new.write_text(src)


if __name__ == "__main__":
    regenerate_initial()
