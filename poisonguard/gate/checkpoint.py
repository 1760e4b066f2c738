"""The release gate: one GX checkpoint over the verdict table, the release manifest and the provenance checks.

Why GX and not a few asserts: the rules are declared once as expectation suites, every run is stored as a
validation result, and Data Docs give the approver a page per run showing what was checked and what failed.
Why the tables go through files: a GX checkpoint hands the same batch parameters to every validation, so three
in-memory frames cannot be fed to one checkpoint; instead the gate writes them as Parquet into
`<gx_root>/uncommitted/gate_tables/` (one pandas-filesystem data source) and the checkpoint reads them back.
A file lock serialises gates that share a GX project. Suites, validation definitions and the checkpoint are
(re)declared with add_or_update on every run, so the stored project always matches this code and reruns never
fail on names that already exist.

The code owns the raise (`GateFailed`), as research/anchors.md §B.6 recommends: no integration default decides
whether a failed expectation blocks a release.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poisonguard.gate.config import GateConfig, resolve_gx_root
from poisonguard.gate.report import ScreeningReport, load_report
from poisonguard.gate.tables import (
    OK,
    PROVENANCE_PAIRS,
    QUARANTINED,
    REQUIRED_COLUMNS,
    provenance_table,
    releasable_ids,
    release_table,
    verdicts_table,
)

CHECKPOINT = "poisonguard_release_gate"
DATASOURCE = "poisonguard_gate_tables"
BATCH = "whole_table"
TABLES = ("verdicts", "release", "provenance")
STAGING = Path("uncommitted") / "gate_tables"
_OK_ROWS = f'status=="{OK}"'


@dataclass
class GateResult:
    """Outcome of one checkpoint run. `failures` holds one line per failed expectation (empty on success);
    `data_docs` is the Data Docs index (file URL); `validation_pages` maps each table (verdicts, release,
    provenance) to the Data Docs page of this run's validation, which stays valid after later runs (the
    index shows the latest)."""

    success: bool
    failures: list[str]
    summary: dict[str, Any]
    data_docs: str | None
    checkpoint_result: Any = field(repr=False, default=None)
    validation_pages: dict[str, str] = field(default_factory=dict)


class GateFailed(RuntimeError):
    """A release was refused. `failures` lists every failed expectation; `result` is the whole GateResult."""

    def __init__(self, result: GateResult) -> None:
        self.result = result
        self.failures = list(result.failures)
        lines = "\n".join(f"  - {f}" for f in self.failures)
        docs = f"\nData Docs: {result.data_docs}" if result.data_docs else ""
        super().__init__(f"release gate failed ({len(self.failures)} expectation(s)):\n{lines}{docs}")


def run_gate(report_dir: str | Path, *, gate_root: str | Path | None = None,
             config: GateConfig | None = None) -> GateResult:
    """Check a report directory and the release it implies (every ok, unflagged input sample).

    Raises GateFailed on any failed expectation and ReportError when the report cannot be read.
    """
    report = load_report(report_dir)
    return check_release(report, releasable_ids(report), gate_root=gate_root, config=config)


def check_release(report: ScreeningReport, release_ids: Sequence[str], *, gate_root: str | Path | None = None,
                  config: GateConfig | None = None) -> GateResult:
    """Run the checkpoint on `report` and the release manifest `release_ids`; raise GateFailed unless it
    passes. Call it with exactly the ids that will be written."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    config = config or GateConfig()
    root = resolve_gx_root(gate_root, config)
    tables = {
        "verdicts": verdicts_table(report),
        "release": release_table(report, release_ids),
        "provenance": provenance_table(report),
    }
    with _locked(root):
        context = gx.get_context(mode="file", context_root_dir=str(root))
        staging = root / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        for name, table in tables.items():  # before declaring: GX checks an asset's file when adding it
            table.to_parquet(staging / f"{name}.parquet", index=False)
        checkpoint = _declare(context, staging.resolve(), config)
        gx_result = checkpoint.run(expectation_parameters={"n_input": len(report.input.ids)},
                                   run_id=RunIdentifier(run_name=report.report_dir.resolve().name))
        # One Data Docs build for the three results (an UpdateDataDocsAction would build once per result).
        docs = context.build_data_docs(resource_identifiers=list(gx_result.run_results))
        pages = _validation_pages(context, gx_result)
    result = GateResult(
        success=bool(gx_result.success),
        failures=_failures(gx_result),
        summary=_summary(report, release_ids, config),
        data_docs=next(iter(docs.values()), None),
        checkpoint_result=gx_result,
        validation_pages=pages,
    )
    if not result.success:
        if not result.failures:  # GX said no without a failed expectation: never let that pass silently
            result.failures.append("checkpoint reported failure without a failed expectation")
        raise GateFailed(result)
    return result


# --- the rules ----------------------------------------------------------------------------------------------


def _suites(config: GateConfig) -> dict[str, list]:
    import great_expectations.expectations as gxe

    rate = config.max_flag_rate
    verdicts = [
        gxe.ExpectTableColumnsToMatchSet(column_set=[*REQUIRED_COLUMNS, "input_position"], exact_match=False,
                                         description="the verdict table has the contract's columns"),
        gxe.ExpectTableRowCountToEqual(value={"$PARAMETER": "n_input"},
                                       description="one verdict row per input sample (row count)"),
        gxe.ExpectColumnValuesToNotBeNull(column="id", description="every row has an id"),
        gxe.ExpectColumnValuesToBeUnique(column="id", description="ids are unique"),
        gxe.ExpectColumnValuesToBeBetween(column="input_position", min_value=0,
                                          description="every verdict id is an id of the input dataset"),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="index", column_B="input_position",
                                            description="`index` is the id's position in the input file"),
        gxe.ExpectColumnValuesToNotBeNull(column="status", description="every row has a status"),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=[OK, QUARANTINED],
                                        description="status is ok or quarantined"),
        gxe.ExpectColumnValuesToBeBetween(column="p_poison", min_value=0.0, max_value=1.0,
                                          description="p_poison lies in [0, 1] where present"),
        gxe.ExpectColumnValuesToNotBeNull(column="p_poison", row_condition=_OK_ROWS, condition_parser="pandas",
                                          description="every screened (ok) sample has a p_poison"),
        gxe.ExpectColumnValuesToNotBeNull(column="flagged", description="every row has a flag"),
        gxe.ExpectColumnValuesToBeInSet(column="flagged", value_set=[True, False],
                                        description="flagged is a boolean"),
        gxe.ExpectColumnMeanToBeBetween(column="flagged", min_value=0.0, max_value=rate, row_condition=_OK_ROWS,
                                        condition_parser="pandas",
                                        description=f"at most {rate:g} of the screened samples are flagged "
                                                    "(gate.max_flag_rate)"),
    ]
    release = [
        gxe.ExpectTableColumnsToMatchSet(column_set=["id", "input_position", "verdict_status", "verdict_flagged"],
                                         exact_match=False, description="the release manifest's columns"),
        gxe.ExpectColumnValuesToNotBeNull(column="id", description="every released sample has an id"),
        gxe.ExpectColumnValuesToBeUnique(column="id", description="no sample is released twice"),
        gxe.ExpectColumnValuesToBeBetween(column="input_position", min_value=0,
                                          description="only input samples are released"),
        gxe.ExpectColumnValuesToNotBeNull(column="verdict_status",
                                          description="every released id has a verdict"),
        gxe.ExpectColumnValuesToBeInSet(column="verdict_status", value_set=[OK],
                                        description="no quarantined id is released"),
        gxe.ExpectColumnValuesToNotBeNull(column="verdict_flagged",
                                          description="every released id has a valid flag"),
        gxe.ExpectColumnValuesToBeInSet(column="verdict_flagged", value_set=[False],
                                        description="no flagged id is released"),
    ]
    provenance = [
        gxe.ExpectTableRowCountToEqual(value=1, description="one provenance record"),
        gxe.ExpectColumnValuesToBeInSet(column="input_problem", value_set=[""],
                                        description="the input dataset named in manifest.json is readable"),
    ]
    for key in PROVENANCE_PAIRS:
        provenance += [
            gxe.ExpectColumnValuesToNotBeNull(column=f"manifest_{key}",
                                              description=f"manifest.json records {key}"),
            gxe.ExpectColumnValuesToNotBeNull(column=key, description=f"{key} could be recomputed"),
            gxe.ExpectColumnPairValuesToBeEqual(column_A=key, column_B=f"manifest_{key}",
                                                description=f"{key} now equals the value in manifest.json"),
        ]
    return {"verdicts": verdicts, "release": release, "provenance": provenance}


# --- GX project plumbing ------------------------------------------------------------------------------------


def _validation_pages(context, gx_result) -> dict[str, str]:
    """table -> the Data Docs URL of this run's validation of it (first site that has one)."""
    pages = {}
    for identifier in gx_result.run_results:
        suite = identifier.expectation_suite_identifier.name
        table = suite.removeprefix(_suite_name(""))
        urls = [u.get("site_url") for u in context.get_docs_sites_urls(resource_identifier=identifier)]
        if any(urls):
            pages[table] = next(u for u in urls if u)
    return pages


def _suite_name(table: str) -> str:
    return f"poisonguard_{table}"


def _declare(context, staging: Path, config: GateConfig):
    """Create or refresh the data source, suites, validation definitions and checkpoint; return the latter."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    bars = context.variables.progress_bars  # a ProgressBarsConfig when set here, a dict once reloaded
    if (bars.get("globally", True) if isinstance(bars, dict) else getattr(bars, "globally", True)):
        context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm in logs
        context.variables.save()
    source = _datasource(context, staging)
    definitions = []
    for table, expectations in _suites(config).items():
        suite = context.suites.add_or_update(gx.ExpectationSuite(name=_suite_name(table),
                                                                 expectations=expectations))
        try:
            asset = source.get_asset(table)
        except LookupError:
            asset = source.add_parquet_asset(name=table)
        try:
            batch = asset.get_batch_definition(BATCH)
        except KeyError:
            batch = asset.add_batch_definition_path(name=BATCH, path=f"{table}.parquet")
        definitions.append(context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"{CHECKPOINT}_{table}", data=batch, suite=suite)))
    return context.checkpoints.add_or_update(gx.Checkpoint(
        name=CHECKPOINT, validation_definitions=definitions,
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
    ))


def _datasource(context, staging: Path):
    """The pandas-filesystem source over the staging folder; recreated if the project moved."""
    try:
        source = context.data_sources.get(DATASOURCE)
    except KeyError:
        source = None
    if source is not None and Path(source.base_directory).resolve() != staging:
        context.data_sources.delete(DATASOURCE)
        source = None
    return source or context.data_sources.add_pandas_filesystem(name=DATASOURCE, base_directory=staging)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Exclusive lock on the GX project: two gates must not overwrite each other's staged tables."""
    (root / "uncommitted").mkdir(parents=True, exist_ok=True)
    with open(root / "uncommitted" / "gate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- reading the result -------------------------------------------------------------------------------------


def _failures(gx_result) -> list[str]:
    lines = []
    tables = {_suite_name(t): t for t in TABLES}
    for suite_result in gx_result.run_results.values():
        table = tables.get(suite_result.suite_name, suite_result.suite_name)
        for r in suite_result.results:
            if not r.success:
                lines.append(f"{table}: {_describe(r)}")
    return lines


def _describe(r) -> str:
    cfg = r.expectation_config
    what = cfg.description or cfg.type
    kwargs = cfg.kwargs
    target = kwargs.get("column") or (
        f"{kwargs['column_A']} vs {kwargs['column_B']}" if "column_A" in kwargs else "table")
    head = f"{what} [{cfg.type} on {target}]"
    error = _exception_message(r.exception_info or {})
    if error is not None:
        return f"{head}: error: {error}"
    res = r.result or {}
    if "unexpected_count" in res:
        shown = ", ".join(repr(_plain(v)) for v in (res.get("partial_unexpected_list") or [])[:5])
        return f"{head}: {res['unexpected_count']} unexpected value(s), e.g. {shown}"
    bounds = {"value": "expected", "max_value": "at most", "min_value": "at least"}
    expected = "".join(f", {label} {kwargs[k]!r}" for k, label in bounds.items() if kwargs.get(k) is not None)
    return f"{head}: observed {_plain(res.get('observed_value'))!r}{expected}"


def _exception_message(info: dict[str, Any]) -> str | None:
    """GX reports an expectation's exception either directly or keyed by the metric that raised it."""
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    nested = [v for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
    return str(nested[0].get("exception_message")) if nested else None


def _plain(value: Any) -> Any:
    """numpy scalars and tuples of them as plain Python, for readable messages."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value.item() if hasattr(value, "item") else value


def _summary(report: ScreeningReport, release_ids: Sequence[str], config: GateConfig) -> dict[str, Any]:
    v = report.verdicts
    status = v["status"] if "status" in v.columns else None
    n_ok = int((status == OK).sum()) if status is not None else 0
    n_flagged = int((v["flagged"] == True).sum()) if "flagged" in v.columns else 0
    return {
        "report_dir": str(report.report_dir),
        "input": str(report.input.path),
        "n_input": len(report.input.ids),
        "n_verdicts": len(v),
        "n_ok": n_ok,
        "n_quarantined": int((status == QUARANTINED).sum()) if status is not None else 0,
        "n_flagged": n_flagged,
        "flag_rate": n_flagged / n_ok if n_ok else 0.0,
        "max_flag_rate": config.max_flag_rate,
        "n_release": len(release_ids),
    }
