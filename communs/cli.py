"""The ``communs`` command line."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import communs
from communs.core import addresses, migrate, service
from communs.core.db import Database
from communs.core.i18n import gettext as _
from communs.core.models import Role
from communs.core.service import InvalidInput
from communs.core.settings import Settings, load_settings
from communs.reports import service as reports

app = typer.Typer(help="Communs: the open platform of the shared smart city.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
commune_app = typer.Typer(help="Communes (tenants) and their addresses.", no_args_is_help=True)
user_app = typer.Typer(help="Accounts.", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys for machines.", no_args_is_help=True)
hub_app = typer.Typer(help="The NGSI-LD hub.", no_args_is_help=True)
hub_context_app = typer.Typer(
    help="JSON-LD @contexts the hub serves or keeps (air-gapped sites).", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(commune_app, name="commune")
app.add_typer(user_app, name="user")
app.add_typer(apikey_app, name="apikey")
hub_retention_app = typer.Typer(
    help="How long each commune keeps the history of its entities.", no_args_is_help=True
)
hub_mapping_app = typer.Typer(
    help="Device mappings: how a simple MQTT payload becomes one attribute.", no_args_is_help=True
)
app.add_typer(hub_app, name="hub")
hub_app.add_typer(hub_context_app, name="context")
hub_app.add_typer(hub_retention_app, name="retention")
hub_app.add_typer(hub_mapping_app, name="mapping")

console = Console(stderr=True)
out = Console()

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder of the SQLite file, uploads and secret key.",
        envvar="COMMUNS_DATA_DIR",
    ),
]


def _open(data_dir: Path | None) -> tuple[Settings, Database]:
    settings = load_settings(data_dir)
    migrate.upgrade(settings.database_url)
    return settings, Database(settings.database_url)


def _fail(error: Exception) -> None:
    console.print(f"[bold red]Erreur :[/] {error}")
    raise typer.Exit(2)


def _commune(db: Database, slug: str) -> Any:
    with db.read() as session:
        commune = service.commune_by_slug(session, slug)
    if commune is None:
        _fail(InvalidInput(_("Aucune commune n'a l'identifiant « {slug} ».").format(slug=slug)))
    return commune


@app.command()
def version() -> None:
    """Print the version."""
    out.print(f"communs {communs.__version__}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: DataDir = None,
    demo: Annotated[bool, typer.Option("--demo", help="Create the demo territory.")] = False,
    log_json: Annotated[bool, typer.Option("--log-json", help="Logs as JSON lines.")] = False,
) -> None:
    """Serve the site and run the background services in one process."""
    import uvicorn

    from communs.core.logs import configure_logging
    from communs.core.web import create_app

    settings = load_settings(data_dir)
    log_config = configure_logging(log_json or settings.log_json)
    migrate.upgrade(settings.database_url)
    db = Database(settings.database_url)
    if demo:
        from communs.demo.service import ensure_demo

        credentials = ensure_demo(db, settings)
        if not settings.hub_default_tenant:
            settings = settings.with_overrides(hub_default_tenant=credentials["commune"])
        out.print("[bold]Démo / demo[/]")
        out.print_json(json.dumps(credentials, ensure_ascii=False))
        out.print(f"Identifiants enregistrés dans {settings.data_dir / 'demo-credentials.json'}")
    out.print(f"Communs {communs.__version__} : http://{host}:{port}/")
    application = create_app(settings, db, run_jobs=True)
    # Objects alive at start-up live for the whole process: keep them out of every
    # garbage collection, which otherwise adds pauses to request latencies. Parsing and
    # storing a batch of 1,000 entities allocates objects that reference counting frees;
    # with the default threshold (700) the collector still ran over 40 times per batch
    # (batch upsert +10 to 15 % with this one, bench/hub/bench_hub.py batch).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    uvicorn.run(application, host=host, port=port, log_config=log_config, access_log=False)


@app.command()
def worker(
    data_dir: DataDir = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="Logs as JSON lines.")] = False,
) -> None:
    """Run the job runner alone, beside web processes (scale-out on PostgreSQL)."""
    import asyncio

    from communs.core.jobs import JobRunner
    from communs.core.logs import configure_logging
    from communs.core.plugins import load_job_handlers

    settings = load_settings(data_dir)
    configure_logging(log_json or settings.log_json)
    migrate.upgrade(settings.database_url)
    load_job_handlers()
    db = Database(settings.database_url)
    try:
        asyncio.run(JobRunner(db, settings).run_forever())
    except KeyboardInterrupt:
        pass
    finally:
        db.close()


@app.command()
def notify(
    data_dir: DataDir = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="Logs as JSON lines.")] = False,
    wake_stdin: Annotated[
        bool, typer.Option("--wake-stdin", help="Woken by bytes on stdin; ends at its end.")
    ] = False,
) -> None:
    """Deliver NGSI-LD notifications (communs serve runs it as a child process; run it
    alone beside web processes in scale-out: one delivers at a time, others stand by)."""

    import uvloop

    from communs.core.logs import configure_logging
    from communs.hub.notify import run_notifier_process

    settings = load_settings(data_dir)
    configure_logging(log_json or settings.log_json)
    db = Database(settings.database_url)
    try:
        uvloop.run(run_notifier_process(settings, db, wake_stdin=wake_stdin))
    except KeyboardInterrupt:
        pass
    finally:
        db.close()


@app.command()
def ingest(
    data_dir: DataDir = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="Logs as JSON lines.")] = False,
) -> None:
    """Run the MQTT consumer alone (scale-out: set COMMUNS_MQTT_SHARE_GROUP and a distinct
    COMMUNS_MQTT_CLIENT_ID in each process)."""
    import asyncio

    from communs.core.logs import configure_logging
    from communs.hub.ingest import ingest_service, run_until_signalled

    settings = load_settings(data_dir)
    configure_logging(log_json or settings.log_json)
    if not settings.mqtt_url:
        _fail(ValueError(_("COMMUNS_MQTT_URL n'est pas défini : aucun courtier MQTT à écouter.")))
    migrate.upgrade(settings.database_url)
    db = Database(settings.database_url)
    try:
        service = ingest_service(settings, db)
        if service is not None:
            asyncio.run(run_until_signalled(service))
    finally:
        db.close()


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Bring the database schema to the latest migration (a no-op when current)."""
    settings = load_settings(data_dir)
    migrate.upgrade(settings.database_url)
    out.print(_("Schéma à jour."))


@commune_app.command("create")
def commune_create(
    name: Annotated[str, typer.Option(help="Name, e.g. 'Tours'.")],
    insee: Annotated[str, typer.Option("--insee", help="INSEE code, e.g. 37261.")],
    slug: Annotated[
        str | None, typer.Option(help="URL identifier (from the name if absent).")
    ] = None,
    boundary: Annotated[Path | None, typer.Option(help="GeoJSON file of the boundary.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Create a commune with the default services and report categories."""
    _settings, db = _open(data_dir)
    try:
        geometry = json.loads(boundary.read_text()) if boundary else None
        commune = db.write(
            service.create_commune,
            slug=slug or service.slugify(name),
            name=name,
            insee_code=insee,
            boundary=geometry,
        )
    except (InvalidInput, json.JSONDecodeError, OSError) as error:
        _fail(error)
    db.write(reports.install_default_categories, commune.id)
    out.print(_("Commune créée : {name} ({slug})").format(name=commune.name, slug=commune.slug))


@commune_app.command("list")
def commune_list(data_dir: DataDir = None) -> None:
    """List the communes."""
    _settings, db = _open(data_dir)
    table = Table("slug", "name", "insee", "services")
    with db.read() as session:
        for commune in service.list_communes(session):
            table.add_row(
                commune.slug,
                commune.name,
                commune.insee_code,
                str(len(service.list_services(session, commune.id))),
            )
    out.print(table)


@commune_app.command("import-addresses")
def commune_import_addresses(
    file: Annotated[
        Path, typer.Argument(help="Base Adresse Locale CSV file.", exists=True, dir_okay=False)
    ],
    commune: Annotated[str, typer.Option("--commune", help="Slug of the commune.")],
    data_dir: DataDir = None,
) -> None:
    """Replace a commune's addresses with a Base Adresse Locale file."""
    _settings, db = _open(data_dir)
    target = _commune(db, commune)
    content = file.read_bytes()
    total_lines = max(content.count(b"\n"), 1)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        reading = progress.add_task(_("Lecture"), total=total_lines)
        try:
            parsed = addresses.parse_bal(
                content, target, lambda done: progress.update(reading, completed=done)
            )
        except InvalidInput as error:
            progress.stop()
            _fail(error)
        progress.update(reading, completed=total_lines)
        writing = progress.add_task(_("Enregistrement"), total=max(len(parsed.rows), 1))
        imported = db.write(
            addresses.replace_addresses,
            target.id,
            parsed.rows,
            lambda done: progress.update(writing, completed=done),
        )
        progress.update(writing, completed=max(len(parsed.rows), 1))
    for line in addresses.iter_errors_text(parsed.errors):
        console.print(f"[yellow]{line}[/]")
    out.print(
        _("{imported} adresses importées, {rejected} lignes rejetées.").format(
            imported=imported, rejected=len(parsed.errors)
        )
    )


@user_app.command("create")
def user_create(
    email: Annotated[str, typer.Option(help="E-mail address (the login).")],
    name: Annotated[str, typer.Option(help="Full name.")],
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            envvar="COMMUNS_NEW_USER_PASSWORD",
        ),
    ],
    instance_admin: Annotated[bool, typer.Option("--instance-admin")] = False,
    commune: Annotated[
        str | None, typer.Option(help="Slug of a commune to give a role in.")
    ] = None,
    role: Annotated[Role, typer.Option(help="Role in that commune.")] = Role.AGENT,
    data_dir: DataDir = None,
) -> None:
    """Create an account, optionally with a role in one commune."""
    _settings, db = _open(data_dir)
    target = _commune(db, commune) if commune else None

    def unit(session: Any) -> Any:
        user = service.create_user(
            session, email=email, name=name, password=password, is_instance_admin=instance_admin
        )
        if target is not None:
            service.grant_role(session, user_id=user.id, commune_id=target.id, role=role)
        return user

    try:
        user = db.write(unit)
    except InvalidInput as error:
        _fail(error)
    out.print(_("Compte créé : {email}").format(email=user.email))


@apikey_app.command("create")
def apikey_create(
    commune: Annotated[str, typer.Option(help="Slug of the commune the key belongs to.")],
    name: Annotated[str, typer.Option(help="What the key is for.")],
    scope: Annotated[
        list[str], typer.Option(help=f"Capability, repeatable: {', '.join(service.API_SCOPES)}.")
    ],
    data_dir: DataDir = None,
) -> None:
    """Create an API key; the secret is printed once."""
    _settings, db = _open(data_dir)
    target = _commune(db, commune)
    try:
        issued = db.write(service.create_api_key, commune_id=target.id, name=name, scopes=scope)
    except InvalidInput as error:
        _fail(error)
    out.print(issued.secret)


@hub_context_app.command("add")
def hub_context_add(
    url: Annotated[str, typer.Argument(help="The URL the context answers for.")],
    file: Annotated[
        Path, typer.Argument(help="JSON-LD document with an @context.", exists=True, dir_okay=False)
    ],
    data_dir: DataDir = None,
) -> None:
    """Keep a copy of a remote @context, served for its URL without network."""
    from communs.hub import contexts
    from communs.hub.errors import NgsiError

    _settings, db = _open(data_dir)
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
        row = db.write(contexts.add_context, url, document, contexts.CACHED)
    except (NgsiError, json.JSONDecodeError, OSError, UnicodeDecodeError) as error:
        _fail(error)
    out.print(f"{row.kind} {row.url}", markup=False, highlight=False, soft_wrap=True)


@hub_context_app.command("list")
def hub_context_list(data_dir: DataDir = None) -> None:
    """List the @contexts of the hub."""
    from communs.hub import contexts

    _settings, db = _open(data_dir)
    table = Table("url", "kind", "created", "hits")
    with db.read() as session:
        for row in contexts.list_contexts(session):
            table.add_row(
                escape(row.url),
                row.kind,
                row.created_at.isoformat(timespec="seconds"),
                str(row.hits or 0),
            )
    out.print(table)


@hub_context_app.command("remove")
def hub_context_remove(
    url: Annotated[str, typer.Argument(help="The URL of the context.")],
    data_dir: DataDir = None,
) -> None:
    """Forget an @context (hosted, cached or fetched)."""
    from communs.hub import contexts
    from communs.hub.errors import NgsiError

    _settings, db = _open(data_dir)
    try:
        row = db.write(contexts.delete_context, url)
    except NgsiError as error:
        _fail(error)
    out.print(f"- {row.url}", markup=False, highlight=False, soft_wrap=True)


TypeOption = Annotated[
    str | None,
    typer.Option("--type", help="Entity type (name or IRI); without it, every type."),
]


def _type_iri(name: str | None) -> str:
    from communs.hub.context import term_map

    return "" if not name else term_map(None, None).expand(name)


@hub_retention_app.command("set")
def hub_retention_set(
    commune: Annotated[str, typer.Argument(help="Commune slug.")],
    days: Annotated[int, typer.Argument(min=1, help="Days of history to keep.")],
    entity_type: TypeOption = None,
    data_dir: DataDir = None,
) -> None:
    """Keep DAYS of history (older readings are deleted every hour by the job runner)."""
    from communs.hub import history

    _settings, db = _open(data_dir)
    commune_id = _commune(db, commune).id
    db.write(history.set_retention, commune_id, days, _type_iri(entity_type))
    out.print(f"{commune} {entity_type or '*'} {days}", markup=False, highlight=False)


@hub_retention_app.command("list")
def hub_retention_list(
    commune: Annotated[str, typer.Argument(help="Commune slug.")], data_dir: DataDir = None
) -> None:
    """The retention rules of a commune."""
    from communs.hub import history

    _settings, db = _open(data_dir)
    commune_id = _commune(db, commune).id
    table = Table("type", "days")
    with db.read() as session:
        for type_iri, days in sorted(history.retention_rules(session, commune_id).items()):
            table.add_row(escape(type_iri or "*"), str(days))
    out.print(table)


@hub_retention_app.command("remove")
def hub_retention_remove(
    commune: Annotated[str, typer.Argument(help="Commune slug.")],
    entity_type: TypeOption = None,
    data_dir: DataDir = None,
) -> None:
    """Keep history forever again (for that type, or the commune-wide rule)."""
    from communs.hub import history

    _settings, db = _open(data_dir)
    commune_id = _commune(db, commune).id
    if not db.write(history.remove_retention, commune_id, _type_iri(entity_type)):
        _fail(ValueError(_("Aucune règle de conservation pour ce type.")))
    out.print(f"- {commune} {entity_type or '*'}", markup=False, highlight=False)


@hub_mapping_app.command("set")
def hub_mapping_set(
    commune: Annotated[str, typer.Argument(help="Commune slug.")],
    entity_type: Annotated[str, typer.Argument(help="Entity type, as in the MQTT topic.")],
    attribute: Annotated[str, typer.Argument(help="Attribute the value goes to (name or IRI).")],
    value_key: Annotated[str, typer.Option(help="Key of the value in the payload.")] = "v",
    time_key: Annotated[str, typer.Option(help="Key of the observation time ('' for none).")] = "t",
    unit_code: Annotated[str | None, typer.Option(help="UN/CEFACT unit code, e.g. CEL.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Map simple payloads such as {"v": 23.5, "t": "…"} of one entity type to ATTRIBUTE."""
    from communs.hub import devices

    _settings, db = _open(data_dir)
    commune_id = _commune(db, commune).id
    mapping = devices.DeviceMapping(entity_type, attribute, value_key, time_key or None, unit_code)
    try:
        db.write(devices.set_mapping, commune_id, mapping)
    except InvalidInput as error:
        _fail(error)
    out.print(f"{commune} {entity_type} -> {attribute}", markup=False, highlight=False)


@hub_mapping_app.command("list")
def hub_mapping_list(
    commune: Annotated[str, typer.Argument(help="Commune slug.")], data_dir: DataDir = None
) -> None:
    """The device mappings of a commune."""
    from communs.hub import devices

    _settings, db = _open(data_dir)
    commune_id = _commune(db, commune).id
    table = Table("type", "attribute", "value key", "time key", "unit code")
    with db.read() as session:
        for mapping in devices.list_mappings(session, commune_id):
            table.add_row(
                escape(mapping.entity_type),
                escape(mapping.attribute),
                escape(mapping.value_key),
                escape(mapping.time_key or "-"),
                escape(mapping.unit_code or "-"),
            )
    out.print(table)


@hub_mapping_app.command("remove")
def hub_mapping_remove(
    commune: Annotated[str, typer.Argument(help="Commune slug.")],
    entity_type: Annotated[str, typer.Argument(help="Entity type, as in the MQTT topic.")],
    data_dir: DataDir = None,
) -> None:
    """Forget the device mapping of an entity type."""
    from communs.hub import devices

    _settings, db = _open(data_dir)
    commune_id = _commune(db, commune).id
    if not db.write(devices.remove_mapping, commune_id, entity_type):
        _fail(ValueError(_("Aucune correspondance pour ce type.")))
    out.print(f"- {commune} {entity_type}", markup=False, highlight=False)


@hub_app.command("rejections")
def hub_rejections(
    commune: Annotated[
        str | None,
        typer.Argument(help="Commune slug; without it, messages for no known commune."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many, newest first.")] = 50,
    data_dir: DataDir = None,
) -> None:
    """MQTT messages the hub could not store (dead letters), with the reason."""
    from communs.hub import devices

    _settings, db = _open(data_dir)
    commune_id = _commune(db, commune).id if commune else None
    table = Table("received", "topic", "reason", "payload")
    with db.read() as session:
        for row in devices.list_rejections(session, commune_id, limit):
            payload = row.payload if len(row.payload) <= 200 else row.payload[:199] + "…"
            table.add_row(
                row.received_at.isoformat(timespec="seconds"),
                escape(row.topic),
                escape(row.reason),
                escape(payload),
            )
    out.print(table)


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="communs")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
