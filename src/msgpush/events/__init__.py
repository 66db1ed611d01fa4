"""Events, routing rules, templates, alert-storm grouping and inbound adapters (Alertmanager,
Grafana): how platform modules report what happened and msgpush decides who hears it, and how."""
