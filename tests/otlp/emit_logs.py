"""Emits log records through the OpenTelemetry Python SDK and its OTLP/HTTP exporter.

Usage: emit_logs.py ENDPOINT SERVICE COUNT

Sends COUNT warnings `event I` with attributes `i` (int) and `user` (string) from a resource
with `service.name = SERVICE`, gzip-compressed, to ENDPOINT/v1/logs. Exits 1 unless every
export the SDK made succeeded (the SDK itself only logs a failed export).
"""

import logging
import sys

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

endpoint, service, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
results = []


class CheckedExporter(OTLPLogExporter):
    def export(self, *args, **kwargs):
        result = super().export(*args, **kwargs)
        results.append(result)
        return result


provider = LoggerProvider(
    resource=Resource.create({"service.name": service, "deployment.environment": "test"})
)
provider.add_log_record_processor(
    BatchLogRecordProcessor(
        CheckedExporter(endpoint=endpoint + "/v1/logs", compression=Compression.Gzip),
        max_export_batch_size=100,
    )
)
log = logging.getLogger("ferry.otlp.test")
log.setLevel(logging.DEBUG)
log.propagate = False
log.addHandler(LoggingHandler(level=logging.DEBUG, logger_provider=provider))
for i in range(count):
    log.warning("event %d", i, extra={"i": i, "user": f"u{i % 7}"})
provider.force_flush()
provider.shutdown()
# The result enum was renamed across SDK versions (LogExportResult, LogRecordExportResult).
failed = [r for r in results if getattr(r, "name", None) != "SUCCESS"]
print(f"exports: {len(results)}, failed: {len(failed)}")
sys.exit(1 if failed or not results else 0)
