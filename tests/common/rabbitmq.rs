//! A RabbitMQ cluster on loopback (placeholder; being written).
