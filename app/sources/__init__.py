"""Messages in: RabbitMQ and MQTT consumers, the heartbeat filter, mDash and SQS control."""
