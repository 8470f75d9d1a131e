"""One router per resource; `service.app.create_app` mounts them under ``/api/v1``."""
