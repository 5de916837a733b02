//! MassTransit (repo MassTransit/MassTransit): its envelope on the message-type exchange, read by a
//! receive endpoint of the RabbitMQ transport.

use super::*;

#[tokio::test]
async fn masstransit_consumer_gets_its_envelope_on_the_message_type_exchange() {
    let mut env = TestEnv::new("fw_masstransit").await;
    let mut objects = BrokerObjects::new();
    // A namespace unique to this test (a valid .NET namespace), so its exchanges are its own.
    let namespace = format!("{}.Contracts", env.name);
    let message_exchange = format!("{namespace}:OrderSubmitted");

    // A receive endpoint as MassTransit declares it (src/Transports/MassTransit.RabbitMqTransport/
    // RabbitMqTransport/Configuration/RabbitMqReceiveEndpointBuilder.cs): exchange and queue named
    // after the endpoint (fanout, durable), queue bound to it; for the consumed message type
    // (Topology/ExchangeBindingConsumeTopologySpecification.cs) the message-type exchange
    // `Namespace:TypeName` (RabbitMqMessageNameFormatter), fanout, durable, not auto-delete,
    // bound exchange-to-exchange into the endpoint's exchange.
    let endpoint = format!("{}-order-submitted", env.name);
    let channel = &env.channel;
    declare_exchange(
        channel,
        &mut objects,
        &endpoint,
        ExchangeKind::Fanout,
        true,
        false,
    )
    .await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    declare_queue(
        channel,
        &mut objects,
        &endpoint,
        durable,
        FieldTable::default(),
    )
    .await;
    bind_queue(channel, &endpoint, &endpoint, "").await;
    declare_exchange(
        channel,
        &mut objects,
        &message_exchange,
        ExchangeKind::Fanout,
        true,
        false,
    )
    .await;
    bind_exchange(channel, &endpoint, &message_exchange).await;
    let mut consumer = consume(channel, &endpoint).await;

    let args = preset_args(&env);

    let run = start_walbox(&mut env, args, &["--preset", "masstransit"]).await;

    // The producer writes walbox's outbox table (sql/outbox.sql) in its transaction, the event
    // type being the message's .NET full name.
    let payload = r#"{"OrderId": 42, "CustomerId": "c-9", "Total": 12.5}"#;
    let event_type = format!("{namespace}.OrderSubmitted");
    let row = env
        .db
        .query_one(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             VALUES ('order', '42', $1, $2::text::jsonb) RETURNING id::text, payload::text",
            &[&event_type, &payload],
        )
        .await
        .expect("insert");
    let id: String = row.get(0);
    let stored_payload: String = row.get(1);

    let deliveries = receive_exactly(&env, run, &mut consumer, 1).await;
    let delivery = &deliveries[0];
    assert_eq!(delivery.exchange.as_str(), message_exchange);
    // RabbitMqSendTransportContext.cs: routingKey ?? "" for a publish.
    assert_eq!(delivery.routing_key.as_str(), "");
    // The receive side picks the deserializer by content type; by default only the envelope
    // serializer is registered (SerializationConfiguration.cs AddSystemTextJson;
    // SystemTextJsonMessageSerializer.JsonContentType).
    assert_eq!(
        content_type(delivery),
        Some("application/vnd.masstransit+json")
    );
    assert_eq!(delivery.properties.delivery_mode(), &Some(2), "persistent");
    let envelope = body_json(delivery);
    // EnvelopeMessageContext.ConvertIdToGuid: messageId must be a Guid (else FormatException).
    let message_id = envelope["messageId"].as_str().expect("messageId");
    assert!(is_guid(message_id), "messageId {message_id} is not a Guid");
    assert_eq!(message_id, id, "messageId = the row's id");
    // EnvelopeSerializerContext.IsSupportedMessageType: the consumer's MessageUrn
    // (MessageUrn.cs: urn:message:Namespace:TypeName) among messageType.
    assert_eq!(
        envelope["messageType"],
        json!([format!("urn:message:{namespace}:OrderSubmitted")])
    );
    // The message itself (read case-insensitively: PropertyNameCaseInsensitive).
    assert_eq!(envelope["message"], json_of(&stored_payload));
    if let Some(sent) = envelope.get("sentTime").and_then(Value::as_str) {
        assert!(is_timestamp(&env, sent).await, "sentTime {sent}");
    }
    if let Some(headers) = envelope.get("headers") {
        assert!(
            headers.is_object() || headers.is_null(),
            "headers must be an object"
        );
    }
    drop(consumer);
    drop(objects);
}
