#!/usr/bin/env node
// list_tagger.js: example pop3proxyd filter in Node.js: mail from a mailing
// list (a List-Id header) gets an "X-List: <list id>" header to sort on.
'use strict';

const pf = require('./pop3filter');

pf.main({
  name: 'list_tagger.js/1.0',
  actions: ['edit_headers'],
  onMessage: async (req) => {
    const listId = req.header('List-Id');
    if (listId === undefined) return pf.accept({ reason: 'not list mail' });
    const id = (listId.match(/<([^>]+)>/) || [null, listId])[1];
    return pf.accept(pf.addHeader('X-List', id), { tags: ['list'] });
  },
});
