"""``redgrid``: the one command a person runs (db, demo, web, worker, cron, run, chat, menu, ...).

Settings are loaded once per invocation; a bad setting ends the command with one line naming
the variable and exit status 2.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from models.exceptions import ConfigError
from models.settings import Settings, load_settings

log = logging.getLogger("redgrid")


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def _settings(ctx: click.Context) -> Settings:
    if ctx.obj is None:
        ctx.obj = load_settings()
    return ctx.obj  # type: ignore[no-any-return]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx: click.Context) -> None:
    """RedGrid: WeChat bot and grid-task dispatcher for Dongyang Red Cross."""
    _setup_logging()


# --- database ------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply Alembic migrations."""
    from models.db import make_engine
    from models.migrate import upgrade

    engine = make_engine(_settings(ctx))
    upgrade(engine, revision)
    engine.dispose()
    click.echo(f"database at {revision}")


# --- demo ----------------------------------------------------------------------------------


@cli.group()
def demo() -> None:
    """Demo data for Dongyang."""


@demo.command("seed")
@click.option("--seed", "seed_value", default=1, show_default=True, help="random seed")
@click.option("--volunteers", default=3000, show_default=True)
@click.option("--if-empty", is_flag=True, help="do nothing when the database already has grid units")
@click.pass_context
def demo_seed(ctx: click.Context, seed_value: int, volunteers: int, if_empty: bool) -> None:
    """Fill the database with Dongyang's towns, synthetic villages, grids, people, AEDs, shifts."""
    from models.db import make_engine, session_factory
    from models.migrate import upgrade
    from redgrid.demo import seed_demo, summary_table

    engine = make_engine(_settings(ctx))
    upgrade(engine)
    sessions = session_factory(engine)
    counts = seed_demo(sessions, seed=seed_value, volunteers=volunteers, if_empty=if_empty)
    click.echo(summary_table(counts))
    engine.dispose()


# --- processes -----------------------------------------------------------------------------


@cli.command()
@click.option("--port", type=int, default=None, help="default: $PORT or 8080")
@click.pass_context
def web(ctx: click.Context, port: int | None) -> None:
    """Serve the webhook and pages (aiohttp)."""
    from aiohttp import web as aioweb

    from bot.app import create_app
    from models.redisconn import ensure_embedded

    settings = _settings(ctx)
    owned = ensure_embedded(settings)
    try:
        aioweb.run_app(
            create_app(settings), host=settings.host, port=port or settings.port, access_log=None,
            print=lambda *_: log.info("web listening on %s:%s", settings.host, port or settings.port),
        )
    finally:
        if owned:
            owned.stop()


@cli.command()
@click.option("--burst", is_flag=True, help="exit when the queues are empty")
@click.pass_context
def worker(ctx: click.Context, burst: bool) -> None:
    """Run an RQ worker (with its scheduler) on the high, default and bulk queues."""
    from jobs.worker import run_worker

    sys.exit(0 if run_worker(_settings(ctx), burst=burst) else 1)


@cli.command()
@click.pass_context
def cron(ctx: click.Context) -> None:
    """Run the one ``rq cron`` scheduler process."""
    from jobs.schedule import run_cron

    run_cron(_settings(ctx))


@cli.command()
@click.option("--no-seed", is_flag=True, help="do not seed the demo data into an empty database")
@click.pass_context
def run(ctx: click.Context, no_seed: bool) -> None:
    """Run everything (web + worker + cron) on this machine; owns the embedded Redis."""
    from honcho.manager import Manager

    from models.db import make_engine, session_factory
    from models.migrate import upgrade
    from models.redisconn import EmbeddedRedis
    from redgrid.demo import seed_demo, summary_table

    settings = _settings(ctx)
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings)
    upgrade(engine)
    if not no_seed:
        counts = seed_demo(session_factory(engine), seed=1, if_empty=True)
        if counts:
            click.echo(summary_table(counts))
    engine.dispose()

    embedded = None if settings.redis_url else EmbeddedRedis(settings).start()
    env = dict(os.environ)
    if embedded:
        env["REDIS_URL"] = embedded.url
        env["REDGRID_EMBEDDED_OWNER"] = "1"
    exe = str(Path(sys.argv[0]).resolve()) if Path(sys.argv[0]).exists() else "redgrid"
    manager = Manager()
    for name in ("web", "worker", "cron"):
        manager.add_process(name, f"{exe} {name}", env=env)
    try:
        manager.loop()
    finally:
        if embedded:
            embedded.stop()
    sys.exit(manager.returncode or 0)


# --- chat simulator ------------------------------------------------------------------------

CHAT_OPENIDS = {"volunteer": "demo-volunteer", "grid-worker": "demo-gridworker", "coordinator": "demo-coordinator"}


@cli.command()
@click.option("--as", "role", type=click.Choice(sorted(CHAT_OPENIDS)), default="volunteer", show_default=True,
              help="which demo person to speak as")
@click.option("--openid", default=None, help="speak as this openid instead")
@click.option("--url", default=None, help="default: http://127.0.0.1:$PORT/wechat")
@click.option("--no-subscribe", is_flag=True, help="do not send the subscribe event first")
@click.option("--mode", type=click.Choice(["plain", "compatible", "safe"]), default=None,
              help="default: safe when WECHAT_AES_KEY is set, else plain")
@click.pass_context
def chat(ctx: click.Context, role: str, openid: str | None, url: str | None, no_subscribe: bool,
         mode: str | None) -> None:
    """Talk to the webhook as a WeChat user would (lines starting with "/" are simulator commands)."""
    from bot.simulator import CHAT_HELP, Simulator, run_chat

    settings = _settings(ctx)
    sim = Simulator.from_settings(
        settings, url or f"http://127.0.0.1:{settings.port}/wechat", openid or CHAT_OPENIDS[role], mode=mode,
    )
    interactive = sys.stdin.isatty()

    def lines() -> Any:
        if not interactive:
            yield from sys.stdin
            return
        click.echo(CHAT_HELP)
        while True:
            try:
                yield input("▶ ")
            except EOFError:
                return

    status = run_chat(sim, lines(), click.echo, err=lambda m: click.echo(m, err=True),
                      subscribe=not no_subscribe, echo=not interactive)
    sys.exit(status)


@cli.group()
def aed() -> None:
    """The AED registry."""


@aed.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--datum", type=click.Choice(["wgs84", "gcj02"]), required=True,
              help="coordinate system of the file (Amap/Tencent exports are gcj02)")
@click.pass_context
def aed_import(ctx: click.Context, path: Path, datum: str) -> None:
    """Import AEDs from CSV (name,address,lat,lng,hours,status,keeper,last_inspected) or GeoJSON."""
    from models.db import make_engine, session_factory, transaction
    from redgrid.aeds import import_file

    engine = make_engine(_settings(ctx))
    with transaction(session_factory(engine)) as session:
        report = import_file(session, path, datum=datum)  # type: ignore[arg-type]
        if not report.ok:
            session.rollback()
    engine.dispose()
    for row, reason in report.errors:
        click.echo(f"row {row}: {reason}", err=True)
    if not report.ok:
        click.echo(f"nothing imported: {len(report.errors)} bad rows", err=True)
        sys.exit(1)
    click.echo(f"imported: {report.created} new, {report.updated} updated")


# --- WeChat menu ---------------------------------------------------------------------------


@cli.group()
def menu() -> None:
    """The Official Account's custom menu."""


@menu.command("push")
@click.pass_context
def menu_push(ctx: click.Context) -> None:
    """Push bot/menu.py's menu to WeChat (menu/create)."""
    import bot.menu as menu_module
    from jobs.wechat_api import WeChatAPI
    from models.exceptions import WeChatAPIError, WeChatUnavailable
    from models.redisconn import connect_redis, ensure_embedded

    body = getattr(menu_module, "MENU", None)
    if body is None:
        body = menu_module.menu_definition()
    problems = getattr(menu_module, "menu_problems", lambda _m: [])(body)
    if problems:
        raise click.ClickException("menu refused before sending: " + "; ".join(problems))
    settings = _settings(ctx)
    owned = ensure_embedded(settings)
    client = connect_redis(settings)
    try:
        WeChatAPI(settings, client).create_menu(body)
    except (WeChatAPIError, WeChatUnavailable) as exc:
        raise click.ClickException(f"WeChat refused the menu: {exc}") from None
    finally:
        client.close()
        if owned:
            owned.stop()
    click.echo(f"menu pushed: {len(body.get('button', []))} buttons")


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="redgrid", standalone_mode=True)
    except ConfigError as exc:
        click.echo(f"redgrid: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
