/* bridge.c: the scanner exchanges pop3filter-clamd shares with
 * pop3filter-spamd (one copy of the code, kept in that folder). */
#include "../pop3filter-spamd/bridge.c"
