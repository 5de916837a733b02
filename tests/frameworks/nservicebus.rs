//! NServiceBus (repos Particular/NServiceBus.RabbitMQ, Particular/NServiceBus): an endpoint
//! subscribed under the conventional routing topology.

use super::*;

#[tokio::test]
async fn nservicebus_endpoint_gets_the_event_with_message_id_and_type() {
    let mut env = TestEnv::new("fw_nservicebus").await;
    let mut objects = BrokerObjects::new();
    let namespace = format!("{}.Sales.Messages", env.name);

    // An endpoint subscribed under the conventional routing topology
    // (src/NServiceBus.Transport.RabbitMQ/Routing/ConventionalRoutingTopology.cs): Initialize
    // declares the endpoint's queue (quorum by default) and a fanout exchange of the same name
    // and binds them; SetupSubscription declares the event's exchange `type.Namespace + ":" +
    // type.Name` (fanout, durable, not auto-delete) and binds it exchange-to-exchange into the
    // endpoint's exchange. A nested event type: `type.Name` is the short name.
    let endpoint = format!("{}-Billing", env.name);
    let accepted_exchange = format!("{namespace}:OrderAccepted");
    let nested_exchange = format!("{namespace}:Cancelled");
    let channel = &env.channel;
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    declare_queue(channel, &mut objects, &endpoint, durable, quorum).await;
    declare_exchange(
        channel,
        &mut objects,
        &endpoint,
        ExchangeKind::Fanout,
        true,
        false,
    )
    .await;
    bind_queue(channel, &endpoint, &endpoint, "").await;
    for exchange in [&accepted_exchange, &nested_exchange] {
        declare_exchange(
            channel,
            &mut objects,
            exchange,
            ExchangeKind::Fanout,
            true,
            false,
        )
        .await;
        bind_exchange(channel, &endpoint, exchange).await;
    }
    let mut consumer = consume(channel, &endpoint).await;

    let args = preset_args(&env);

    let run = start_walbox(&mut env, args, &["--preset", "nservicebus"]).await;

    let events = [
        (
            format!("{namespace}.OrderAccepted"),
            r#"{"OrderId": "o-42", "Total": 12.5}"#,
            accepted_exchange.clone(),
        ),
        (
            format!("{namespace}.OrderEvents+Cancelled"),
            r#"{"OrderId": "o-43", "Reason": "customer"}"#,
            nested_exchange.clone(),
        ),
    ];
    let mut ids = Vec::new();
    env.db.batch_execute("BEGIN").await.unwrap();
    for (event_type, payload, _) in &events {
        let row = env
            .db
            .query_one(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                 VALUES ('order', 'o-42', $1, $2::text::jsonb) RETURNING id::text, payload::text",
                &[event_type, payload],
            )
            .await
            .expect("insert");
        ids.push((row.get::<_, String>(0), row.get::<_, String>(1)));
    }
    env.db.batch_execute("COMMIT").await.unwrap();

    let deliveries = receive_exactly(&env, run, &mut consumer, events.len()).await;
    for (delivery, ((event_type, _, exchange), (id, payload))) in
        deliveries.iter().zip(events.iter().zip(&ids))
    {
        assert_eq!(delivery.exchange.as_str(), exchange);
        assert_eq!(delivery.routing_key.as_str(), "");
        // Receiving/MessageConverter.cs DefaultMessageIdStrategy: a non-empty message-id
        // property is required; without one MessagePump.cs moves the message to the error
        // queue.
        assert_eq!(message_id(delivery), *id);
        // MessageConverter.RetrieveHeaders: NServiceBus.EnclosedMessageTypes, else the `type`
        // property; core's MessageMetadataRegistry matches the type's FullName.
        let enclosed = headers(delivery)
            .and_then(|table| table.get("NServiceBus.EnclosedMessageTypes"))
            .map(|_| string_header(delivery, "NServiceBus.EnclosedMessageTypes"));
        let message_type = enclosed.as_deref().or(type_property(delivery));
        assert_eq!(message_type, Some(event_type.as_str()));
        // MessageDeserializerResolver: NServiceBus.ContentType (or content_type copied into it)
        // picks the deserializer; SystemJsonSerializer's is application/json.
        let declared_type = headers(delivery)
            .and_then(|table| table.get("NServiceBus.ContentType"))
            .map(|_| string_header(delivery, "NServiceBus.ContentType"));
        assert_eq!(
            declared_type.as_deref().or(content_type(delivery)),
            Some("application/json")
        );
        assert_eq!(delivery.properties.delivery_mode(), &Some(2), "persistent");
        // A plain JSON body (no envelope); an empty body would skip the handlers.
        assert_eq!(body_json(delivery), json_of(payload));
    }
    drop(consumer);
    drop(objects);
}
