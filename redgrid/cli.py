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


# The long-running processes log one JSON object per line (for a log collector); commands a
# person runs keep the readable line. LOG_FORMAT=json|text overrides. Both are scrubbed of
# secrets and full phone numbers (bot/logs.py).
_JSON_LOGGING = ("web", "worker", "cron")


def _setup_logging(command: str | None = None) -> None:
    from bot.logs import setup_logging

    fmt = os.environ.get("LOG_FORMAT", "").lower() or ("json" if command in _JSON_LOGGING else "text")
    setup_logging(os.environ.get("LOG_LEVEL", "INFO").upper(), fmt="json" if fmt == "json" else "text",
                  stream=sys.stderr)


def _settings(ctx: click.Context) -> Settings:
    if ctx.obj is None:
        from bot.logs import add_secrets, settings_secrets

        ctx.obj = load_settings()
        add_secrets(settings_secrets(ctx.obj))  # from now on the log scrubs their values too
    return ctx.obj  # type: ignore[no-any-return]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx: click.Context) -> None:
    """RedGrid: WeChat bot and grid-task dispatcher for Dongyang Red Cross."""
    _setup_logging(ctx.invoked_subcommand)


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
    _demo_logins(sessions)
    engine.dispose()


# --- processes -----------------------------------------------------------------------------


@cli.command()
@click.option("--port", type=int, default=None, help="default: $PORT or 8080")
@click.option("--processes", type=int, default=None, help="web processes (default: $WEB_PROCESSES or 1)")
@click.pass_context
def web(ctx: click.Context, port: int | None, processes: int | None) -> None:
    """Serve the webhook and pages (aiohttp; several processes behind gunicorn)."""
    from redgrid.webserver import serve

    settings = _settings(ctx)
    serve(settings, port=port or settings.port, processes=processes or settings.web_processes)


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
        _demo_logins(session_factory(engine))
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
    problems: list[str] = getattr(menu_module, "menu_problems", lambda _m: [])(body)
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


# --- web console, roster import/export --------------------------------------------------------


def _demo_logins(sessions: Any) -> None:
    """The demo's coordinators get the README's demo password (only those without a login)."""
    from bot.console.auth import DEMO_PASSWORD, ensure_demo_logins
    from models.db import transaction, utcnow

    with transaction(sessions) as s:
        n = ensure_demo_logins(s, now=utcnow())
    if n:
        # a note, not part of the summary on stdout (which is identical on every run)
        click.echo(f"console: {n} demo coordinators can log in at /console/ with password {DEMO_PASSWORD!r}",
                   err=True)


def _find_person(session: Any, openid: str | None, phone: str | None) -> Any:
    from sqlmodel import select

    from models.tables import Person

    if bool(openid) == bool(phone):
        raise click.UsageError("give exactly one of --openid or --phone")
    stmt = select(Person).where(Person.openid == openid) if openid else select(Person).where(Person.phone == phone)
    person = session.exec(stmt).first()
    if person is None:
        raise click.ClickException("no such person")
    return person


@cli.group()
def console() -> None:
    """The coordinators' web console."""


@console.command("set-password")
@click.option("--openid", default=None)
@click.option("--phone", default=None)
@click.pass_context
def console_set_password(ctx: click.Context, openid: str | None, phone: str | None) -> None:
    """Set a coordinator's console password, read from stdin (first line)."""
    from bot.console.auth import set_password
    from models.db import make_engine, session_factory, transaction, utcnow
    from models.exceptions import NotAllowed

    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("password: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    engine = make_engine(_settings(ctx))
    try:
        with transaction(session_factory(engine)) as s:
            person = _find_person(s, openid, phone)
            set_password(s, person_id=person.id, password=password, now=utcnow())
            name = person.name
    except (ValueError, NotAllowed) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(f"console password set for {name}")


@console.command("link")
@click.option("--openid", default=None)
@click.option("--phone", default=None)
@click.pass_context
def console_link(ctx: click.Context, openid: str | None, phone: str | None) -> None:
    """Print a volunteer's signed link to their /v/ pages."""
    from bot.console.volunteer import volunteer_link
    from models.db import make_engine, session_factory

    settings = _settings(ctx)
    engine = make_engine(settings)
    with session_factory(engine)() as s:
        person = _find_person(s, openid, phone)
        click.echo(volunteer_link(settings, person_id=person.id))
    engine.dispose()


@cli.group("import")
def import_() -> None:
    """Import data."""


@import_.command("volunteers")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--scope", "scope_code", default=None, help="only accept grids under this unit code")
@click.pass_context
def import_volunteers_cmd(ctx: click.Context, file: Path, scope_code: str | None) -> None:
    """Import volunteers from CSV or XLSX: all rows or none (each bad row is listed)."""
    from sqlmodel import select

    from models.db import make_engine, session_factory, transaction, utcnow
    from models.tables import GridUnit
    from redgrid.roster import import_volunteers

    settings = _settings(ctx)
    engine = make_engine(settings)
    try:
        with transaction(session_factory(engine)) as s:
            scope_path = None
            if scope_code:
                unit = s.exec(select(GridUnit).where(GridUnit.code == scope_code)).first()
                if unit is None:
                    raise click.ClickException(f"no grid unit {scope_code}")
                scope_path = unit.path
            report = import_volunteers(s, data=file.read_bytes(), filename=file.name, actor_id=None,
                                       scope_path=scope_path, now=utcnow(), tz=settings.tz)
            if not report.ok:
                s.rollback()
    finally:
        engine.dispose()
    if report.ok:
        click.echo(f"imported {report.created} volunteers from {file.name}")
        return
    click.echo(f"{file.name}: {len(report.error_rows())} bad rows, nothing imported", err=True)
    for e in report.errors:
        click.echo(f"  row {e.row} {e.label}: {e.message}", err=True)
    sys.exit(1)


@cli.group("export")
def export_() -> None:
    """Export data."""


@export_.command("hours")
@click.option("--month", required=True, help="YYYY-MM")
@click.option("--format", "fmt", type=click.Choice(["csv", "xlsx"]), default="csv", show_default=True)
@click.option("--by", type=click.Choice(["town", "person"]), default="town", show_default=True,
              help="CSV only: the town totals or the per-volunteer rows (XLSX holds both)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="default: the file name it would download as, in the current directory")
@click.pass_context
def export_hours_cmd(ctx: click.Context, month: str, fmt: str, by: str, out: Path | None) -> None:
    """Export service hours of a month by town (and per volunteer) to CSV or XLSX."""
    from models.db import make_engine, session_factory
    from redgrid.roster import export_hours

    settings = _settings(ctx)
    engine = make_engine(settings)
    try:
        with session_factory(engine)() as s:
            body, name, _ctype = export_hours(s, month=month, fmt=fmt, scope_path=None, by=by, tz=settings.tz)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--month") from None
    finally:
        engine.dispose()
    target = out or Path(name)
    target.write_bytes(body)
    click.echo(f"wrote {target}")


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="redgrid", standalone_mode=True)
    except ConfigError as exc:
        click.echo(f"redgrid: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
