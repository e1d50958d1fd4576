"""The RabbitMQ login from the settings, shared by the consumer (RabbitSource) and the ControlPublisher."""

from __future__ import annotations

from app.core.settings import Settings
from pylib import rabbit


def broker_spec(settings: Settings, component: str, exchange: str, heartbeat: int) -> rabbit.BrokerSpec:
    """The broker login from the settings; the connection is named for rabbitmqctl and the management UI."""
    return rabbit.BrokerSpec(
        servers=settings.rabbitmq_servers,
        user=settings.rabbitmq_user,
        password=settings.rabbitmq_password,
        vhost=settings.rabbitmq_vhost,
        heartbeat=heartbeat,
        name=f"{settings.app_name} {component} {exchange}",
    )
