"""Message bus backends (RabbitMQ); the database queue needs no adapter of its own."""
