"""``DADIP2P_*`` metrics and the audit log, in the reference system's formats."""

from shoal.observability.audit import AuditLog, AuditRecord
from shoal.observability.metrics import Meter, Metrics, MetricType

__all__ = ["AuditLog", "AuditRecord", "Meter", "MetricType", "Metrics"]
