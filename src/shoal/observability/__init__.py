"""Metrics (the reference ``DADIP2P_*`` set and shoal's own), logs and the audit log."""

from shoal.observability.audit import AuditLog, AuditRecord
from shoal.observability.meter import Meter, MetricType
from shoal.observability.metrics import Metrics

__all__ = ["AuditLog", "AuditRecord", "Meter", "MetricType", "Metrics"]
