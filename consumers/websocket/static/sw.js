// The live page's service worker: shows a reminder that todo-notifier sent
// by Web Push, and opens the task when the notification is clicked.
"use strict";
self.addEventListener("push", (event) => {
  let msg = {};
  try { msg = event.data ? event.data.json() : {}; } catch (e) {}
  const title = msg.title ? "Reminder: " + msg.title : "Reminder";
  const body = msg.due_local ? "Due " + msg.due_local : "";
  event.waitUntil(self.registration.showNotification(title, {
    body, tag: msg.delivery_id, data: { link: msg.link },
  }));
});
self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const link = event.notification.data && event.notification.data.link;
  if (link) event.waitUntil(self.clients.openWindow(link));
});
