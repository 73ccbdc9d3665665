//! E-mail over SMTP (lettre): `SMTP_URL` says where and how (`smtp://` with
//! optional STARTTLS via `?tls=required`, `smtps://` for TLS, credentials in
//! the URL), `SMTP_FROM` the sender. The `Message-ID` is the delivery id,
//! so a repeated delivery is recognisable as the same message.

use super::{Attempt, Channel, ChannelKind, Failure};
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;
use todo_platform::preferences::EmailChannel;

pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    app_url: String,
}

impl Email {
    pub fn new(
        smtp_url: &str,
        from: Mailbox,
        timeout: Duration,
        app_url: String,
    ) -> Result<Self, lettre::transport::smtp::Error> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)?
            .timeout(Some(timeout))
            .build();
        Ok(Self {
            transport,
            from,
            app_url,
        })
    }

    fn message(&self, attempt: &Attempt<'_>, to: Mailbox) -> Result<Message, Failure> {
        let m = attempt.message;
        let due = m.due_local();
        let link = m.link(&self.app_url);
        let mut text = format!("Reminder: {}\n", m.title);
        if let Some(due) = &due {
            text.push_str(&format!("Due: {due}\n"));
        }
        text.push_str(&format!("\nOpen it: {link}\n"));
        let due_html = due
            .as_deref()
            .map(|d| format!("<p>Due: <strong>{}</strong></p>", escape(d)))
            .unwrap_or_default();
        let html = format!(
            "<!doctype html><html><body><h1>{}</h1>{due_html}<p><a href=\"{}\">Open the task</a></p></body></html>",
            escape(&m.title),
            escape(&link)
        );
        let domain = self.from.email.domain();
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(format!("Reminder: {}", m.title))
            .message_id(Some(format!("<{}@{domain}>", attempt.delivery_id)))
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(text),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(html),
                    ),
            )
            .map_err(|e| Failure::Permanent(format!("could not build the message: {e}")))
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[async_trait::async_trait]
impl Channel for Email {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Email
    }

    async fn send(&self, attempt: &Attempt<'_>) -> Result<(), Failure> {
        let email: EmailChannel = attempt.settings("e-mail settings")?;
        let to: Mailbox = email
            .address
            .as_str()
            .parse()
            .map_err(|e| Failure::Permanent(format!("not an address: {e}")))?;
        let message = self.message(attempt, to)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            // 5xx: the server will say the same next time.
            Err(e) if e.is_permanent() => Err(Failure::Permanent(format!("SMTP: {e}"))),
            Err(e) => Err(Failure::Transient(format!("SMTP: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape("<b>&\"'"), "&lt;b&gt;&amp;&quot;&#39;");
    }
}
