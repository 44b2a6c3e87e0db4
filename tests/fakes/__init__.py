"""Real stand-ins for the notifier's external peers: SMTP, a Web Push service, Twilio's API."""
