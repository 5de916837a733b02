//! MassTransit (repo MassTransit/MassTransit): its envelope on the message-type exchange, read by a
//! receive endpoint of the RabbitMQ transport.

use super::*;

#[tokio::test]
async fn masstransit_consumer_gets_its_envelope_on_the_message_type_exchange() {
    let mut env = TestEnv::new("fw_masstransit").await;
    let mut objects = BrokerObjects::new();
    // A namespace unique to this test (a valid .NET namespace), so its exchanges are its own.
    let namespace = format!("{}.Contracts", env.name);
    // A top-level and a nested message type. RabbitMqMessageNameFormatter
    // (DefaultMessageNameFormatter with nested separator "-") names their exchanges
    // `Namespace:TypeName` and `Namespace:Outer-Inner`; MessageUrn.GetMessageNameFromType gives
    // `urn:message:Namespace:TypeName` and `urn:message:Namespace:Outer+Inner`.
    let messages = [
        (
            format!("{namespace}.OrderSubmitted"),
            format!("{namespace}:OrderSubmitted"),
            format!("urn:message:{namespace}:OrderSubmitted"),
            r#"{"OrderId": 42, "CustomerId": "c-9", "Total": 12.5}"#,
        ),
        (
            format!("{namespace}.OrderEvents+Shipped"),
            format!("{namespace}:OrderEvents-Shipped"),
            format!("urn:message:{namespace}:OrderEvents+Shipped"),
            r#"{"OrderId": 42, "Carrier": "DHL"}"#,
        ),
    ];

    // A receive endpoint as MassTransit declares it (src/Transports/MassTransit.RabbitMqTransport/
    // RabbitMqTransport/Configuration/RabbitMqReceiveEndpointBuilder.cs): exchange and queue named
    // after the endpoint (fanout, durable), queue bound to it; for each consumed message type
    // (Topology/ExchangeBindingConsumeTopologySpecification.cs) the message-type exchange, fanout,
    // durable, not auto-delete, bound exchange-to-exchange into the endpoint's exchange.
    let endpoint = format!("{}-order-submitted", env.name);
    let channel = &env.channel;
    let fanout = ExchangeKind::Fanout;
    declare_exchange(
        channel,
        &mut objects,
        &endpoint,
        fanout.clone(),
        true,
        false,
    )
    .await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let no_arguments = FieldTable::default();
    declare_queue(channel, &mut objects, &endpoint, durable, no_arguments).await;
    bind_queue(channel, &endpoint, &endpoint, "").await;
    for (_, exchange, _, _) in &messages {
        declare_exchange(channel, &mut objects, exchange, fanout.clone(), true, false).await;
        bind_exchange(channel, &endpoint, exchange).await;
    }
    let mut consumer = consume(channel, &endpoint).await;

    let args = preset_args(&env);
    let run = start_walbox(&mut env, args, &["--preset", "masstransit"]).await;

    // The producer writes walbox's outbox table (sql/outbox.sql) in its transaction, the event
    // type being the message's .NET full name.
    let mut rows = Vec::new();
    env.db.batch_execute("BEGIN").await.unwrap();
    for (event_type, _, _, payload) in &messages {
        let row = env
            .db
            .query_one(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                 VALUES ('order', '42', $1, $2::text::jsonb) RETURNING id::text, payload::text",
                &[event_type, payload],
            )
            .await
            .expect("insert");
        rows.push((row.get::<_, String>(0), row.get::<_, String>(1)));
    }
    env.db.batch_execute("COMMIT").await.unwrap();

    let deliveries = receive_exactly(&env, run, &mut consumer, messages.len()).await;
    for (delivery, ((_, exchange, urn, _), (id, payload))) in
        deliveries.iter().zip(messages.iter().zip(&rows))
    {
        assert_eq!(delivery.exchange.as_str(), exchange);
        // RabbitMqSendTransportContext.cs: routingKey ?? "" for a publish.
        assert_eq!(delivery.routing_key.as_str(), "");
        // The receive side picks the deserializer by content type; by default only the
        // envelope serializer is registered (SerializationConfiguration.cs AddSystemTextJson;
        // SystemTextJsonMessageSerializer.JsonContentType).
        assert_eq!(
            content_type(delivery),
            Some("application/vnd.masstransit+json")
        );
        assert_eq!(delivery.properties.delivery_mode(), &Some(2), "persistent");
        let envelope = body_json(delivery);
        // EnvelopeMessageContext.ConvertIdToGuid: messageId must be a Guid (else
        // FormatException).
        let message_id = envelope["messageId"].as_str().expect("messageId");
        assert!(is_guid(message_id), "messageId {message_id} is not a Guid");
        assert_eq!(message_id, id, "messageId = the row's id");
        // EnvelopeSerializerContext.IsSupportedMessageType: the consumer's MessageUrn among
        // messageType.
        assert_eq!(envelope["messageType"], json!([urn]));
        // The message itself (read case-insensitively: PropertyNameCaseInsensitive).
        assert_eq!(envelope["message"], json_of(payload));
        if let Some(sent) = envelope.get("sentTime").and_then(Value::as_str) {
            assert!(is_timestamp(&env, sent).await, "sentTime {sent}");
        }
        if let Some(headers) = envelope.get("headers") {
            assert!(
                headers.is_object() || headers.is_null(),
                "headers must be an object"
            );
        }
    }
    drop(consumer);
    drop(objects);
}
